//! Server: connecting the streams a peer opens to their targets, within bounds: the target is
//! resolved off this thread, every backend connection holds a place in the process-wide budget,
//! and a connect that does not complete in time resets its stream.
//!
//! Owns: [`Backends`] (the budget, this worker's resolver handle, the lookups in flight with
//! the streams waiting for each, and the connect deadlines), the route a stream takes once its target is known, and the resets for a
//! spent budget (code 4) and a connect timeout (code 3). Must not touch: how a connected
//! stream moves its bytes ([`super::app`]) or what the resolver decides
//! ([`crate::runtime::resolver`]).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::app::AppConn;
use super::{
    Entry, EventLoop, RESET_BACKEND_BUSY, RESET_CONNECT_FAILED, RESET_CONNECT_TIMEOUT,
    RESET_NOT_ALLOWED, Role,
};
use crate::endpoint::SessionKey;
use crate::handshake::SessionId;
use crate::runtime::io::Driver;
use crate::runtime::resolver::{BackendBudget, LookupRefused, WorkerResolver};
use crate::runtime::{Route, sockopt};
use crate::session::StreamId;

/// A stream waiting for its target's answer from the resolver threads.
#[derive(Debug)]
struct Waiter {
    session: SessionKey,
    /// Slab keys are reused: the answer only counts for the same session.
    session_id: SessionId,
    stream: StreamId,
}

/// One lookup in flight and the streams waiting for it (every stream of this worker that asked
/// for the same target meanwhile joins it, so a burst of opens is one lookup).
#[derive(Debug)]
struct Lookup {
    target: Option<String>,
    waiters: Vec<Waiter>,
}

/// A backend connect in progress and when it gives up.
#[derive(Debug, Clone, Copy)]
struct ConnectDeadline {
    at: Instant,
    entry: usize,
    session: SessionKey,
    stream: StreamId,
}

/// This worker's backend connections in the making.
#[derive(Debug)]
pub(in crate::runtime) struct Backends {
    pub(super) budget: BackendBudget,
    resolver: Option<WorkerResolver>,
    lookups: HashMap<u64, Lookup>,
    /// The lookup in flight for each target.
    in_flight: HashMap<Option<String>, u64>,
    next_token: u64,
    /// In the order they started; the timeout is the same for all, so the earliest is first.
    deadlines: VecDeque<ConnectDeadline>,
}

impl Backends {
    pub(in crate::runtime) fn new(budget: BackendBudget, resolver: Option<WorkerResolver>) -> Self {
        Self {
            budget,
            resolver,
            lookups: HashMap::new(),
            in_flight: HashMap::new(),
            next_token: 0,
            deadlines: VecDeque::new(),
        }
    }

    /// When the earliest connect in progress gives up.
    pub(in crate::runtime) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|d| d.at)
    }

    /// Gives back what a burst of connects grew (the deadlines stay queued until they pass,
    /// connected or not, so a burst leaves a long queue behind it).
    pub(super) fn shrink(&mut self) {
        self.deadlines.shrink_to_fit();
        self.lookups.shrink_to_fit();
        self.in_flight.shrink_to_fit();
    }
}

impl<D: Driver> EventLoop<D> {
    /// Server: connects a stream the peer opened to where the resolver says: at once when the
    /// answer is cached, else once a resolver thread has it. A stream beyond the backend budget,
    /// or beyond the resolver's queue, is reset at once (code 4).
    pub(super) fn open_target(
        &mut self,
        skey: SessionKey,
        stream: StreamId,
        target: Option<String>,
    ) {
        let Role::Server { resolve } = &self.role else {
            // A client connects only the services it exposes (reverse tunnels).
            return self.open_exposed(skey, stream, target);
        };
        let Some(resolver) = &self.backends.resolver else {
            // No resolver threads (not started by `start_server`): resolve here.
            let route = resolve(target.as_deref());
            return self.route_stream(skey, stream, target, route);
        };
        if let Some(route) = resolver.lookup(&target) {
            return self.route_stream(skey, stream, target, route);
        }
        let Some(session_id) = self.endpoint.get(skey).map(|s| *s.session().id()) else {
            return;
        };
        let waiter = Waiter {
            session: skey,
            session_id,
            stream,
        };
        if let Some(lookup) = self
            .backends
            .in_flight
            .get(&target)
            .and_then(|token| self.backends.lookups.get_mut(token))
        {
            lookup.waiters.push(waiter);
            return;
        }
        let token = self.backends.next_token;
        self.backends.next_token += 1;
        match resolver.submit(target.clone(), token) {
            Ok(()) => {
                self.backends.in_flight.insert(target.clone(), token);
                self.backends.lookups.insert(
                    token,
                    Lookup {
                        target,
                        waiters: vec![waiter],
                    },
                );
            }
            Err(why) => {
                tracing::warn!(
                    stream,
                    target = target.as_deref().unwrap_or(""),
                    "cannot resolve the target ({}); resetting the stream",
                    match why {
                        LookupRefused::QueueFull => "too many lookups waiting",
                        LookupRefused::Stopped => "the resolver stopped",
                    }
                );
                self.refuse_stream(skey, stream, RESET_BACKEND_BUSY);
            }
        }
    }

    /// Routes the streams whose targets the resolver threads have answered since the last turn.
    pub(super) fn take_resolved(&mut self) {
        let Some(resolver) = &self.backends.resolver else {
            return;
        };
        for (token, route) in resolver.take_answers() {
            let Some(lookup) = self.backends.lookups.remove(&token) else {
                continue;
            };
            self.backends.in_flight.remove(&lookup.target);
            for waiter in lookup.waiters {
                let still_open = self.endpoint.get(waiter.session).is_some_and(|s| {
                    *s.session().id() == waiter.session_id
                        && s.session().stream_buffered(waiter.stream).is_some()
                        && !s.data().streams.contains_key(&waiter.stream)
                });
                if !still_open {
                    continue;
                }
                let (skey, stream) = (waiter.session, waiter.stream);
                self.route_stream(skey, stream, lookup.target.clone(), route);
                // What the peer sent meanwhile is waiting, and its StreamReadable went by while
                // no connection carried the stream: hand it over now.
                if let Some(&k) = self
                    .endpoint
                    .get(skey)
                    .and_then(|s| s.data().streams.get(&stream))
                {
                    self.stream_to_app(k);
                }
                self.touch(skey);
            }
        }
    }

    /// Sends a stream where its route says; a backend connection takes a place in the budget
    /// first, or the stream is reset (code 4).
    pub(super) fn route_stream(
        &mut self,
        skey: SessionKey,
        stream: StreamId,
        target: Option<String>,
        route: Route,
    ) {
        let addr = match route {
            Route::Connect(addr) => addr,
            Route::Accept => return self.accept_local(skey, stream, target),
            Route::Reset(code) => {
                tracing::info!(
                    stream,
                    target = target.as_deref().unwrap_or(""),
                    code,
                    "target refused; resetting the stream"
                );
                return self.refuse_stream(skey, stream, code);
            }
            Route::Refuse => {
                self.note_target_refused(stream, target.as_deref(), true);
                return self.refuse_stream(skey, stream, RESET_CONNECT_FAILED);
            }
            Route::NotAllowed => {
                self.note_target_refused(stream, target.as_deref(), false);
                return self.refuse_stream(skey, stream, RESET_NOT_ALLOWED);
            }
        };
        let Some(permit) = self.backends.budget.try_acquire() else {
            tracing::warn!(
                stream,
                limit = self.opts.max_backend_connections,
                "backend connection budget spent; resetting the stream"
            );
            return self.refuse_stream(skey, stream, RESET_BACKEND_BUSY);
        };
        match sockopt::connect_nonblocking(addr, None).and_then(|(s, _)| self.io.stream(s)) {
            Ok(sock) => {
                tracing::debug!(stream, target = %addr, requested = target.as_deref().unwrap_or("<default backend>"), "stream opened");
                let app = AppConn::backend(sock, skey, stream, addr, permit);
                match self.add(Entry::App(Box::new(app))) {
                    Ok(k) => {
                        self.endpoint[skey].data_mut().streams.insert(stream, k);
                        self.backends.deadlines.push_back(ConnectDeadline {
                            at: Instant::now() + self.opts.backend_connect_timeout,
                            entry: k,
                            session: skey,
                            stream,
                        });
                    }
                    Err(e) => {
                        tracing::warn!("cannot register target socket: {e}");
                        self.refuse_stream(skey, stream, RESET_CONNECT_FAILED);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stream, target = %addr, "cannot connect to target: {e}; resetting");
                let code = crate::runtime::reset_code::for_connect_error(&e);
                self.refuse_stream(skey, stream, code);
            }
        }
    }

    /// Resets the streams whose backend connect has taken longer than
    /// `backend_connect_timeout` (code 3).
    pub(super) fn expire_backend_connects(&mut self, now: Instant) {
        while let Some(d) = self.backends.deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.backends.deadlines.pop_front();
            let still_connecting = matches!(
                self.entries.get(d.entry),
                Some(Entry::App(app)) if app.is_connecting_for(d.session, d.stream)
            );
            if still_connecting {
                tracing::warn!(
                    stream = d.stream,
                    timeout = ?self.opts.backend_connect_timeout,
                    "target did not accept the connection in time; resetting the stream"
                );
                self.after(d.entry, super::streams::After::Reset(RESET_CONNECT_TIMEOUT));
            }
        }
    }
}
