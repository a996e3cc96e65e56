//! The endpoint: every session of one end and every server handshake in progress, and the
//! protocol decisions that sit above a single session (sans-IO, the way quinn-proto has an
//! `Endpoint` above its `Connection`s).
//!
//! Owns: the session table (a slab, and a map from session id to slab key), admission against
//! `max_sessions` (a [`SessionBudget`] place is taken when the ClientHello of a *new* session is
//! admitted, so handshakes in progress count and concurrent ones cannot overshoot, and given back
//! when that handshake fails or times out, or when the session is removed), the server handshake
//! built from the [`Config`] (one constructor), create-or-attach (a tunnel that finishes its
//! handshake joins its session or creates it), refusing to resume an unknown session, removing
//! closed sessions, the session secret as the capability to join a session (a tunnel that does
//! not carry the secret of the session it names is refused, so it can neither join nor replace a
//! live tunnel), and the client's restart of a lost session (a client endpoint always has one
//! session; after a permanent refusal the next one waits, see `refusal`). Must not touch: sockets, threads or the clock — callers pass `now` and bytes, and
//! write what they get back. The byte-level handshake is [`crate::handshake`]'s; a session's own
//! protocol is [`crate::session`]'s.
//!
//! The runtime's event loop, the simulator ([`crate::sim`]) and the benchmark harness all drive
//! this one type, so what the simulator tests is what the daemon runs.
//!
//! Each session carries a value of the driver's own type `T` next to it (the event loop keeps
//! its sockets there; the simulator and the benches use `()`).

mod budget;
mod preauth;
mod refusal;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_preauth;

pub use budget::SessionBudget;
pub use preauth::{MAX_HANDSHAKE_INPUT, PreauthRefusal, SourceBudget, SourcePrefix};
pub use refusal::{
    ClientRefused, FIRST_RETRY, REPORT_INTERVAL, Refusal, RefusalBackoff, RefusalReport,
};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use slab::Slab;

use crate::config::Config;
use crate::handshake::{
    AcceptedTunnel, Admission, ChannelBinding, HandshakeError, HelloStatus, ServerHandshake,
    ServerProgress, SessionId,
};
use crate::session::Session;

/// Where a session lives in its endpoint (stable while the session exists; reused after).
pub type SessionKey = usize;

/// A server handshake in progress in an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeKey(usize);

/// A session and the driver's value that goes with it.
#[derive(Debug)]
pub struct SessionSlot<T> {
    session: Session,
    data: T,
}

impl<T> SessionSlot<T> {
    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to drive it.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The driver's value.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The driver's value, to change it.
    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }

    /// The session, out of its slot (after [`Endpoint::remove`]).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Both at once.
    pub fn parts_mut(&mut self) -> (&mut Session, &mut T) {
        (&mut self.session, &mut self.data)
    }
}

/// What a step of a server handshake produced.
#[derive(Debug)]
pub struct HandshakeStep {
    /// Bytes to write to the connection before anything else (ServerHello, or a refusal).
    pub output: BytesMut,
    /// Where the handshake stands.
    pub outcome: HandshakeOutcome,
}

/// Where a server handshake stands after a step.
#[derive(Debug)]
pub enum HandshakeOutcome {
    /// More bytes are needed.
    Pending,
    /// The tunnel is verified and attached to `session` (bytes after the ClientHello remain in the
    /// caller's buffer and belong to that session, tunnel `tunnel.tunnel_index`). The handshake
    /// is gone from the endpoint.
    Attached {
        /// The session the tunnel joined.
        session: SessionKey,
        /// The session was created by this tunnel (its first).
        created: bool,
        /// What the handshake settled.
        tunnel: AcceptedTunnel,
    },
    /// The handshake failed (after writing `output`, close the connection). The handshake is
    /// gone from the endpoint.
    Failed(HandshakeError),
}

/// What [`Endpoint::reap`] did with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// The session is still open and stays.
    Open,
    /// The session was closed and is gone (its place in the budget given back).
    Removed {
        /// Client: the fresh session started in its place (none once stopping).
        replacement: Option<SessionKey>,
    },
}

#[derive(Debug)]
enum Side {
    Client,
    Server { budget: SessionBudget },
}

#[derive(Debug)]
struct PendingHandshake {
    handshake: Box<ServerHandshake>,
    /// The new session id this handshake's ClientHello took a budget place for.
    reserved: Option<SessionId>,
    /// The source network this handshake holds a [`SourceBudget`] place for.
    source: Option<SourcePrefix>,
}

/// Every session of one end (see the module docs).
#[derive(Debug)]
pub struct Endpoint<T = ()> {
    config: Arc<Config>,
    side: Side,
    sessions: Slab<SessionSlot<T>>,
    by_id: HashMap<SessionId, SessionKey>,
    handshakes: Slab<PendingHandshake>,
    /// New session ids admitted at ClientHello, each holding one budget place, with how many
    /// of their handshakes are in progress (a client dials its whole pool at once: one place).
    reserved: HashMap<SessionId, usize>,
    /// Server: handshakes in progress per source network (shared with the other workers'
    /// endpoints by [`Endpoint::share_source_budget`]).
    sources: SourceBudget,
    rng: StdRng,
    stopping: bool,
    /// Client: refusals across successive sessions, and the last one not yet taken.
    refusals: RefusalBackoff,
    refused: Option<ClientRefused>,
}

impl<T: Default> Endpoint<T> {
    /// A server endpoint: sessions come from accepted handshakes, admitted against `budget`.
    /// Handshake nonces and session seeds come from `seed`.
    pub fn server(config: Arc<Config>, budget: SessionBudget, seed: [u8; 32]) -> Self {
        Self::new(config, Side::Server { budget }, seed)
    }

    /// A client endpoint: one session, started now, restarted by [`Endpoint::reap`] when it
    /// closes (until [`Endpoint::set_stopping`]). Session ids and nonces come from `seed`.
    pub fn client(config: Arc<Config>, now: Instant, seed: [u8; 32]) -> Self {
        let mut endpoint = Self::new(config, Side::Client, seed);
        endpoint.start_client_session(now, now);
        endpoint
    }

    fn new(config: Arc<Config>, side: Side, seed: [u8; 32]) -> Self {
        let sources = SourceBudget::new(config.max_handshakes_per_source);
        Self {
            config,
            side,
            sessions: Slab::new(),
            by_id: HashMap::new(),
            handshakes: Slab::new(),
            reserved: HashMap::new(),
            sources,
            rng: StdRng::from_seed(seed),
            stopping: false,
            refusals: RefusalBackoff::default(),
            refused: None,
        }
    }

    /// A fresh client session created at `now` whose tunnels are dialed no sooner than
    /// `first_dial`.
    fn start_client_session(&mut self, now: Instant, first_dial: Instant) -> SessionKey {
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        let session = Session::client_dialing_at(self.config.clone(), now, seed, first_dial);
        let id = *session.id();
        let key = self.sessions.insert(SessionSlot {
            session,
            data: T::default(),
        });
        self.by_id.insert(id, key);
        key
    }

    /// Feeds bytes of handshake `key`'s connection, whose [`ChannelBinding`] is `binding`;
    /// consumes what the handshake used from the front of `buf`. On
    /// [`HandshakeOutcome::Attached`] the session is created or joined here.
    pub fn handshake_input(
        &mut self,
        now: Instant,
        key: HandshakeKey,
        buf: &mut BytesMut,
        binding: &ChannelBinding,
    ) -> HandshakeStep {
        let Some(pending) = self.handshakes.get_mut(key.0) else {
            return HandshakeStep {
                output: BytesMut::new(),
                outcome: HandshakeOutcome::Failed(HandshakeError::Malformed("no such handshake")),
            };
        };
        let (by_id, reserved_ids, side) = (&self.by_id, &mut self.reserved, &self.side);
        let sessions = &self.sessions;
        let reserved = &mut pending.reserved;
        let result = pending.handshake.handle_input(now, buf, binding, |tunnel| {
            let existing = by_id.get(&tunnel.session_id).map(|&k| &sessions[k].session);
            let (admission, place) = admit(tunnel, existing, reserved_ids, side);
            *reserved = place;
            admission
        });
        let output = pending.handshake.take_output();
        let outcome = match result {
            Ok(ServerProgress::Pending) => HandshakeOutcome::Pending,
            Ok(ServerProgress::Accepted(tunnel)) => self.attach(now, key, tunnel),
            Err(e) => {
                self.drop_handshake(key);
                HandshakeOutcome::Failed(e)
            }
        };
        HandshakeStep { output, outcome }
    }

    /// Create-or-attach for a verified tunnel.
    fn attach(
        &mut self,
        now: Instant,
        key: HandshakeKey,
        tunnel: AcceptedTunnel,
    ) -> HandshakeOutcome {
        let Some(pending) = self.handshakes.try_remove(key.0) else {
            return HandshakeOutcome::Failed(HandshakeError::Malformed("no such handshake"));
        };
        // Authenticated: the connection no longer counts against its source network.
        self.release_source(pending.source);
        if let Some(&session) = self.by_id.get(&tunnel.session_id) {
            self.release_reservation(pending.reserved);
            if !self.sessions[session]
                .session
                .secret_matches(&tunnel.session_secret)
            {
                // Admission checked it already; a session created under the same id since
                // would have to be another client's.
                return HandshakeOutcome::Failed(HandshakeError::Refused(
                    HelloStatus::SessionSecretMismatch,
                ));
            }
            if self.sessions[session].session.is_closed() {
                // Closed but not yet reaped: it takes no more tunnels, and the client learns
                // on its next dial that the session is gone.
                return HandshakeOutcome::Failed(HandshakeError::Refused(
                    HelloStatus::UnknownSession,
                ));
            }
            self.sessions[session].session.attach_tunnel(now, &tunnel);
            return HandshakeOutcome::Attached {
                session,
                created: false,
                tunnel,
            };
        }
        if tunnel.resume {
            // Admitted as a tunnel of a live session that was removed while this handshake
            // ran: resuming never creates a session.
            self.release_reservation(pending.reserved);
            return HandshakeOutcome::Failed(HandshakeError::Refused(HelloStatus::UnknownSession));
        }
        // The place taken at ClientHello becomes the session's. A handshake whose session was
        // created and has closed since holds none and must find one now.
        let had_place = pending.reserved == Some(tunnel.session_id)
            && self.reserved.remove(&tunnel.session_id).is_some();
        let has_place = had_place
            || match &self.side {
                Side::Server { budget } => budget.try_take(),
                Side::Client => false,
            };
        if !has_place {
            return HandshakeOutcome::Failed(HandshakeError::Refused(HelloStatus::TooManySessions));
        }
        let seed = self.rng.next_u64();
        let session = Session::server(self.config.clone(), now, &tunnel, seed);
        let session = self.sessions.insert(SessionSlot {
            session,
            data: T::default(),
        });
        self.by_id.insert(tunnel.session_id, session);
        HandshakeOutcome::Attached {
            session,
            created: true,
            tunnel,
        }
    }

    /// Removes a session that has closed (giving its budget place back); a client starts a
    /// fresh session in its place unless stopping. An open session stays.
    pub fn reap(&mut self, now: Instant, key: SessionKey) -> Reaped {
        if !self
            .sessions
            .get(key)
            .is_some_and(|s| s.session.is_closed())
        {
            return Reaped::Open;
        }
        let closed = self.remove(key);
        let replacement = match self.side {
            Side::Client if !self.stopping => {
                let mut first_dial = now;
                if let Some(closed) = closed {
                    let (at, refused) = self.refusals.on_session_closed(
                        now,
                        closed.session(),
                        &self.config,
                        &mut self.rng,
                    );
                    first_dial = at;
                    self.refused = refused;
                }
                Some(self.start_client_session(now, first_dial))
            }
            _ => None,
        };
        Reaped::Removed { replacement }
    }

    /// Client: the server refused the last session for good and the current one has not been
    /// accepted yet (it waits, or tries again): a stream asked for now would wait for minutes.
    pub fn is_refused(&self) -> bool {
        self.refusals.in_a_row() > 0
            && self
                .client_session()
                .is_none_or(|key| !self.sessions[key].session.is_established())
    }

    /// Client: the permanent refusal that ended the last session [`Endpoint::reap`] removed, once
    /// (its replacement waits [`ClientRefused::retry_in`] before it dials).
    pub fn take_refusal(&mut self) -> Option<ClientRefused> {
        self.refused.take()
    }

    /// Removes a session whatever its state (giving its budget place back), for a caller that
    /// drives it alone from now on, or drops it.
    pub fn remove(&mut self, key: SessionKey) -> Option<SessionSlot<T>> {
        let slot = self.sessions.try_remove(key)?;
        if self.by_id.get(slot.session.id()) == Some(&key) {
            self.by_id.remove(slot.session.id());
            if let Side::Server { budget } = &self.side {
                budget.give_back();
            }
        }
        Some(slot)
    }
}

impl<T> Endpoint<T> {
    /// Server: starts the handshake of a connection accepted at `now` (none on a client),
    /// without the pre-auth caps (for harnesses that make their own connections; a server
    /// facing a network uses [`Endpoint::accept_connection_from`]).
    pub fn accept_connection(&mut self, now: Instant) -> Option<HandshakeKey> {
        let Side::Server { .. } = self.side else {
            return None;
        };
        Some(self.start_handshake(now, None))
    }

    /// Server: starts the handshake of a connection from `peer` accepted at `now`, or refuses
    /// it (close it at once, without a reply) when this endpoint already has
    /// `Config::max_handshakes` handshakes in progress, or `peer`'s network
    /// `Config::max_handshakes_per_source` (see [`SourcePrefix`]).
    pub fn accept_connection_from(
        &mut self,
        now: Instant,
        peer: IpAddr,
    ) -> Result<HandshakeKey, PreauthRefusal> {
        let Side::Server { .. } = self.side else {
            return Err(PreauthRefusal::NotAServer);
        };
        let source = self.take_preauth_place(peer)?;
        Ok(self.start_handshake(now, Some(source)))
    }

    /// The pre-auth caps, for a connection from `peer` that would become one more handshake
    /// here: this endpoint's `max_handshakes`, then a place for `peer`'s network (taken).
    fn take_preauth_place(&mut self, peer: IpAddr) -> Result<SourcePrefix, PreauthRefusal> {
        let limit = self.config.max_handshakes;
        if self.handshakes.len() >= limit as usize {
            return Err(PreauthRefusal::TooManyHandshakes { limit });
        }
        let source = SourcePrefix::of(peer);
        if !self.sources.try_take(source) {
            return Err(PreauthRefusal::TooManyFromSource {
                network: source,
                limit: self.sources.limit(),
            });
        }
        Ok(source)
    }

    fn start_handshake(&mut self, now: Instant, source: Option<SourcePrefix>) -> HandshakeKey {
        let c = &self.config;
        let handshake = ServerHandshake::new(
            &c.psk,
            c.pool_size,
            c.transport_params(),
            c.preauth_timeout,
            now,
            &mut self.rng,
        )
        .with_capabilities(c.capabilities());
        HandshakeKey(self.handshakes.insert(PendingHandshake {
            handshake: Box::new(handshake),
            reserved: None,
            source,
        }))
    }

    /// Counts the handshakes in progress per source network together with every endpoint
    /// `budget` is shared with (the other workers of a runtime), instead of alone.
    pub fn share_source_budget(&mut self, budget: SourceBudget) {
        self.sources = budget;
    }

    /// The handshakes in progress per source network this endpoint counts against.
    pub fn source_budget(&self) -> &SourceBudget {
        &self.sources
    }

    /// Whether a connection accepted at `accepted_at` has outlived the pre-auth deadline
    /// (`Config::preauth_timeout`) at `now`: a hand-off that waited that long is closed rather
    /// than adopted.
    pub fn preauth_expired(&self, accepted_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(accepted_at) >= self.config.preauth_timeout
    }

    /// Takes over a handshake another endpoint started (a connection handed between workers
    /// before its ClientHello was admitted). Its deadline runs on.
    pub fn adopt_handshake(&mut self, handshake: Box<ServerHandshake>) -> HandshakeKey {
        HandshakeKey(self.handshakes.insert(PendingHandshake {
            handshake,
            reserved: None,
            source: None,
        }))
    }

    /// [`Endpoint::adopt_handshake`] for a connection from `peer`, under the same caps as
    /// [`Endpoint::accept_connection_from`]: it counts against this endpoint's
    /// `max_handshakes` and its source network again (the sending endpoint gave both back in
    /// [`Endpoint::take_handshake`]), so connections aimed at one worker from many accepting
    /// workers cannot pile up there beyond its cap.
    pub fn adopt_handshake_from(
        &mut self,
        handshake: Box<ServerHandshake>,
        peer: IpAddr,
    ) -> Result<HandshakeKey, PreauthRefusal> {
        let source = self.take_preauth_place(peer)?;
        Ok(HandshakeKey(self.handshakes.insert(PendingHandshake {
            handshake,
            reserved: None,
            source: Some(source),
        })))
    }

    /// Gives up handshake `key` to hand it to another endpoint (only before its ClientHello was
    /// fed: then it holds no budget place); its source network's place is given back.
    pub fn take_handshake(&mut self, key: HandshakeKey) -> Option<Box<ServerHandshake>> {
        let pending = self.handshakes.try_remove(key.0)?;
        self.release_reservation(pending.reserved);
        self.release_source(pending.source);
        Some(pending.handshake)
    }

    /// Forgets handshake `key` (its connection failed or closed), giving back its place.
    pub fn abandon_handshake(&mut self, key: HandshakeKey) {
        self.drop_handshake(key);
    }

    /// Fails every handshake whose deadline has passed; returns them (their connections close).
    pub fn handshake_timeout(&mut self, now: Instant) -> Vec<HandshakeKey> {
        let expired: Vec<HandshakeKey> = self
            .handshakes
            .iter_mut()
            .filter_map(|(k, p)| {
                p.handshake
                    .handle_timeout(now)
                    .is_err()
                    .then_some(HandshakeKey(k))
            })
            .collect();
        for &key in &expired {
            self.drop_handshake(key);
        }
        expired
    }

    /// The earliest handshake deadline.
    pub fn poll_handshake_timeout(&self) -> Option<Instant> {
        self.handshakes
            .iter()
            .map(|(_, p)| p.handshake.deadline())
            .min()
    }

    /// Whether handshake `key` has sent its ServerHello (see [`ServerHandshake::answered`]).
    pub fn handshake_answered(&self, key: HandshakeKey) -> bool {
        self.handshakes
            .get(key.0)
            .is_some_and(|p| p.handshake.answered())
    }

    /// Handshakes in progress.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.len()
    }

    fn drop_handshake(&mut self, key: HandshakeKey) {
        if let Some(pending) = self.handshakes.try_remove(key.0) {
            self.release_reservation(pending.reserved);
            self.release_source(pending.source);
        }
    }

    fn release_source(&mut self, source: Option<SourcePrefix>) {
        if let Some(source) = source {
            self.sources.give_back(source);
        }
    }

    /// A handshake that took (or shared) a place for a new session ended without creating it.
    fn release_reservation(&mut self, reserved: Option<SessionId>) {
        let Some(id) = reserved else {
            return;
        };
        let Some(holders) = self.reserved.get_mut(&id) else {
            // The session was created: the place is the session's now.
            return;
        };
        *holders -= 1;
        if *holders == 0 {
            self.reserved.remove(&id);
            if let Side::Server { budget } = &self.side {
                budget.give_back();
            }
        }
    }

    /// The session at `key`.
    pub fn get(&self, key: SessionKey) -> Option<&SessionSlot<T>> {
        self.sessions.get(key)
    }

    /// The session at `key`, to drive it.
    pub fn get_mut(&mut self, key: SessionKey) -> Option<&mut SessionSlot<T>> {
        self.sessions.get_mut(key)
    }

    /// The session with this id.
    pub fn find(&self, id: &SessionId) -> Option<SessionKey> {
        self.by_id.get(id).copied()
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = (SessionKey, &SessionSlot<T>)> {
        self.sessions.iter()
    }

    /// Every session, to drive them.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SessionKey, &mut SessionSlot<T>)> {
        self.sessions.iter_mut()
    }

    /// The keys of every session (a snapshot, to drive them one by one).
    pub fn keys(&self) -> Vec<SessionKey> {
        self.sessions.iter().map(|(k, _)| k).collect()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No session at all.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Client: the one session (there is always one, except after a stop).
    pub fn client_session(&self) -> Option<SessionKey> {
        match self.side {
            Side::Client => self.sessions.iter().next().map(|(k, _)| k),
            Side::Server { .. } => None,
        }
    }

    /// Stops restarting closed client sessions (the runtime is shutting down).
    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// The configuration every session here runs on.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }
}

impl<T> std::ops::Index<SessionKey> for Endpoint<T> {
    type Output = SessionSlot<T>;

    fn index(&self, key: SessionKey) -> &SessionSlot<T> {
        &self.sessions[key]
    }
}

impl<T> std::ops::IndexMut<SessionKey> for Endpoint<T> {
    fn index_mut(&mut self, key: SessionKey) -> &mut SessionSlot<T> {
        &mut self.sessions[key]
    }
}

/// Admission of a verified tunnel: a known session (`existing`) takes it if it carries the
/// session's secret; a resume of an unknown one is refused; a new one needs a budget place
/// (shared by every handshake of that new session). Returns the verdict and the new session id
/// this handshake now holds a place for.
fn admit(
    tunnel: &AcceptedTunnel,
    existing: Option<&Session>,
    reserved: &mut HashMap<SessionId, usize>,
    side: &Side,
) -> (Admission, Option<SessionId>) {
    let id = tunnel.session_id;
    if let Some(session) = existing {
        if !session.secret_matches(&tunnel.session_secret) {
            // Knowing a session's id is not enough to join it or take over one of its slots.
            return (Admission::Refuse(HelloStatus::SessionSecretMismatch), None);
        }
        if session.is_closed() {
            // Closed but not yet reaped: it takes no more tunnels, and the client learns
            // that the session is gone.
            return (Admission::Refuse(HelloStatus::UnknownSession), None);
        }
        return (Admission::Admit, None);
    }
    if tunnel.resume {
        return (Admission::Refuse(HelloStatus::UnknownSession), None);
    }
    if let Some(holders) = reserved.get_mut(&id) {
        *holders += 1;
        return (Admission::Admit, Some(id));
    }
    let Side::Server { budget } = side else {
        return (Admission::Refuse(HelloStatus::TooManySessions), None);
    };
    if !budget.try_take() {
        return (Admission::Refuse(HelloStatus::TooManySessions), None);
    }
    reserved.insert(id, 1);
    (Admission::Admit, Some(id))
}
