//! The event loop's side of in-process streams ([`super::super::api`]): it services them as it
//! services application sockets, with rings in place of a socket.
//!
//! Owns: the loop's entry for each in-process stream ([`LocalConn`]), the streams waiting for
//! the client session to open them, and the loop's ends of the hub (which streams need
//! attention, new streams to open, where accepted streams go). Must not touch: sockets, or
//! socket-backed streams ([`super::app`]); session events reach a [`LocalConn`] through
//! [`StreamConn`], as they reach a socket.
//!
//! The mirror of a socket: [`StreamConn::to_session`] moves bytes the application wrote into
//! the stream while the session takes them (what it refuses waits in `unsent` until
//! `StreamWritable`), and [`StreamConn::to_app`] moves the stream's bytes to the application
//! while its ring has room (when full, the reader's next take sends the stream back here). An application thread never touches the session: it only sets flags,
//! fills or drains its ends of the rings, and sends the stream's handle to the hub, which the
//! loop drains once per iteration in [`EventLoop::poll_local`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::SendError;

use bytes::Bytes;

use super::streams::{After, StreamConn};
use super::{Entry, EventLoop, RESET_APP_ERROR, RESET_CONNECT_FAILED, Role};
use crate::StreamError;
use crate::endpoint::SessionKey;
use crate::error::StreamLimitError;
use crate::runtime::Waker;
use crate::runtime::api::{AcceptSender, Accepted};
use crate::runtime::io::Driver;
use crate::runtime::local::{
    APP_NO_READ, APP_RESET, APP_SHUT, FAILED_OPEN, FAILED_SESSION, Hub, HubInbox, LoopEnds,
    OpenRequest, PEER_FIN, STREAM_BUFFER, StreamShared, stream_pair,
};
use crate::session::{ReadOutcome, Session, StreamId};

/// Most streams serviced per loop iteration before the loop looks at its sockets again.
const POLL_BATCH: usize = 1024;

/// An in-process stream, as the loop holds it.
#[derive(Debug)]
pub(super) struct LocalConn {
    ends: LoopEnds,
    session: SessionKey,
    stream: StreamId,
    /// Bytes the application wrote that the stream has not taken yet.
    unsent: Option<Bytes>,
    /// The application finished writing and the session was told.
    read_eof: bool,
    /// The peer's end of stream was handed to the application.
    write_closed: bool,
}

impl LocalConn {
    fn new(ends: LoopEnds, session: SessionKey, stream: StreamId) -> Self {
        Self {
            ends,
            session,
            stream,
            unsent: None,
            read_eof: false,
            write_closed: false,
        }
    }

    /// A stream call failed: the stream is reset or its session closed.
    fn failed(&mut self, e: StreamError) -> After {
        match e {
            StreamError::Reset(code) => self.ends.shared.set_peer_reset(code),
            // Forgotten after a reset the session has yet to report: `StreamReset` follows.
            StreamError::UnknownStream(_) => return After::Keep,
            _ => self.ends.shared.set(FAILED_SESSION),
        }
        After::Close
    }

    /// Both directions are finished.
    fn finished(&self) -> After {
        if self.read_eof && self.write_closed {
            After::Close
        } else {
            After::Keep
        }
    }
}

impl StreamConn for LocalConn {
    fn session(&self) -> SessionKey {
        self.session
    }

    fn stream(&self) -> StreamId {
        self.stream
    }

    /// Moves bytes the application wrote into its stream, as far as the session takes them;
    /// then its half-close or reset.
    fn to_session(&mut self, session: &mut Session, _buf: &mut [u8]) -> After {
        // Read before draining: every byte written before a flag is in the ring by then.
        let state = self.ends.shared.state();
        if state & APP_RESET != 0 {
            let code = self.ends.shared.app_code();
            tracing::info!(
                stream = self.stream,
                code,
                "in-process stream reset by the application"
            );
            return After::Reset(code);
        }
        if self.read_eof {
            return After::Keep;
        }
        loop {
            let mut chunk = match self.unsent.take() {
                Some(b) => b,
                None => match self.ends.shared.to_loop.pop() {
                    Some(b) => b,
                    None => break,
                },
            };
            // Moved, not cloned: a whole small write goes into the stream without a copy.
            match session.write_from(self.stream, &mut chunk) {
                Ok(n) => {
                    self.ends.shared.tx_bytes.fetch_sub(n, SeqCst);
                    self.ends.shared.wake_writer();
                    if !chunk.is_empty() {
                        // The rest waits for `StreamWritable`.
                        self.unsent = Some(chunk);
                        return After::Keep;
                    }
                }
                Err(e) => return self.failed(e),
            }
        }
        if state & APP_SHUT != 0 {
            self.read_eof = true;
            let _ = session.shutdown(self.stream);
            return self.finished();
        }
        After::Keep
    }

    /// Moves the stream's bytes to the application while its ring has room.
    fn to_app(&mut self, session: &mut Session) -> After {
        let shared = &*self.ends.shared;
        while !self.write_closed {
            // A reader that went away leaves the bytes to be consumed and dropped.
            let discard = shared.state() & APP_NO_READ != 0;
            let full = || shared.rx_bytes.load(SeqCst) >= STREAM_BUFFER || shared.to_app.is_full();
            if !discard && full() {
                // Set, then look again: the reader either sees the flag when it takes a
                // chunk, or made room before this second look.
                shared.rx_blocked.store(true, SeqCst);
                if full() {
                    return After::Keep;
                }
                shared.rx_blocked.store(false, SeqCst);
            }
            let room = STREAM_BUFFER.saturating_sub(shared.rx_bytes.load(SeqCst));
            let max = if discard { STREAM_BUFFER } else { room };
            match session.read(self.stream, max) {
                Ok(ReadOutcome::Data(b)) if !discard => {
                    let n = b.len();
                    shared.rx_bytes.fetch_add(n, SeqCst);
                    if shared.to_app.push(b).is_err() {
                        // Only the loop pushes, and it saw a free slot: cannot happen, but a
                        // lost chunk must not go unnoticed.
                        shared.rx_bytes.fetch_sub(n, SeqCst);
                        tracing::error!(
                            stream = self.stream,
                            "in-process receive ring full; resetting"
                        );
                        return After::Reset(RESET_APP_ERROR);
                    }
                    shared.wake_reader();
                }
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::Fin) => {
                    self.write_closed = true;
                    shared.set(PEER_FIN);
                    return self.finished();
                }
                Ok(ReadOutcome::WouldBlock) => return After::Keep,
                Err(e) => return self.failed(e),
            }
        }
        After::Keep
    }

    fn peer_reset(&mut self, code: u32) {
        self.ends.shared.set_peer_reset(code);
    }

    fn stream_closed(&mut self) -> bool {
        // The session forgot it: both directions are finished, so the entry goes too.
        true
    }

    fn session_lost(&mut self) {
        self.ends.shared.set(FAILED_SESSION);
    }
}

/// The loop's in-process state.
#[derive(Debug)]
pub(super) struct LocalState {
    inbox: HubInbox,
    accept: Option<AcceptSender>,
    /// Client: streams the session could not open yet (no tunnel up, or the stream limit).
    waiting: VecDeque<OpenRequest>,
    batch: Vec<Arc<StreamShared>>,
}

impl<D: Driver> EventLoop<D> {
    /// Gives the loop a hub for in-process streams (accepted ones go to `accept`), before it
    /// runs.
    pub(in crate::runtime) fn attach_local(
        &mut self,
        waker: Arc<Waker>,
        accept: Option<AcceptSender>,
    ) -> Arc<Hub> {
        let inbox = Hub::create(waker, self.opts.engine.max_streams);
        let hub = inbox.hub.clone();
        self.local = Some(LocalState {
            inbox,
            accept,
            waiting: VecDeque::new(),
            batch: Vec::new(),
        });
        hub
    }

    /// Takes new streams and services the streams the application pointed at.
    pub(super) fn poll_local(&mut self) {
        let Some(local) = self.local.as_mut() else {
            return;
        };
        local.inbox.hub.begin_poll();
        while let Ok(req) = local.inbox.opens.try_recv() {
            local.waiting.push_back(req);
        }
        let mut batch = std::mem::take(&mut local.batch);
        while batch.len() < POLL_BATCH {
            match local.inbox.notify.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let more = batch.len() == POLL_BATCH;
        self.open_waiting_locals();
        for shared in batch.drain(..) {
            // Cleared before servicing: what the application does from now on sends it again.
            // A swap reads the flag of the application's last notice, which orders everything
            // it did before that notice before what the loop reads next.
            shared.scheduled.swap(false, SeqCst);
            let key = shared.key.load(Relaxed);
            if matches!(self.entries.get(key), Some(Entry::Local(c)) if Arc::ptr_eq(&c.ends.shared, &shared))
            {
                self.stream_to_session(key);
                // Most notices are writes; the receive side needs the loop only when the
                // reader asked (its bytes otherwise come with `StreamReadable`).
                if shared.rx_kick.swap(false, SeqCst) {
                    self.stream_to_app(key);
                }
            }
        }
        if let Some(local) = self.local.as_mut() {
            local.batch = batch;
            if more {
                // Come straight back for the rest.
                local.inbox.hub.wake();
            }
        }
    }

    /// Client: opens the waiting streams, in order, while the session can.
    pub(super) fn open_waiting_locals(&mut self) {
        loop {
            let Some(local) = self.local.as_mut() else {
                return;
            };
            let Some(req) = local.waiting.front() else {
                crate::drained::release_if_drained(&mut local.waiting);
                return;
            };
            if req.ends.shared.state() & APP_RESET != 0 {
                // Reset before it was opened: nothing to tell the peer.
                local.waiting.pop_front();
                continue;
            }
            let Role::Client { .. } = self.role else {
                // Only a client opens streams; a server's hub never gets requests.
                local.waiting.clear();
                return;
            };
            let Some(skey) = self.endpoint.client_session() else {
                return;
            };
            let opened = self.endpoint[skey]
                .session_mut()
                .open_stream(req.target.as_deref());
            // Even a refused open may have changed the session (see `start_client_stream`).
            self.touch(skey);
            match opened {
                Ok(stream) => {
                    let Some(req) = self.local.as_mut().and_then(|l| l.waiting.pop_front()) else {
                        return;
                    };
                    tracing::info!(
                        stream,
                        target = req.target.as_deref().unwrap_or(""),
                        "stream opened in-process"
                    );
                    let Some(key) = self.add_local(LocalConn::new(req.ends, skey, stream)) else {
                        self.refuse_stream(skey, stream, RESET_APP_ERROR);
                        continue;
                    };
                    self.stream_to_session(key);
                    self.stream_to_app(key);
                }
                // Held until a tunnel is up or a new session replaces a closed one.
                Err(StreamError::NotReady | StreamError::SessionClosed) => {
                    return;
                }
                // A limit fails the open at once (issue 10: never a silent wait).
                Err(e @ (StreamError::StreamLimit | StreamError::LocalStreamLimit(_))) => {
                    let limit = match e {
                        StreamError::LocalStreamLimit(n) => StreamLimitError::Local(n),
                        _ => StreamLimitError::Peer,
                    };
                    tracing::debug!("in-process stream not opened: {limit}");
                    if let Some(req) = self.local.as_mut().and_then(|l| l.waiting.pop_front()) {
                        req.ends.shared.set_limit_failure(limit);
                    }
                }
                Err(e) => {
                    tracing::info!("cannot open an in-process stream: {e}");
                    if let Some(req) = self.local.as_mut().and_then(|l| l.waiting.pop_front()) {
                        req.ends.shared.set(FAILED_OPEN);
                    }
                }
            }
        }
    }

    /// Server: hands a stream the resolver routed to the program to the acceptor.
    pub(super) fn accept_local(
        &mut self,
        skey: SessionKey,
        stream: StreamId,
        target: Option<String>,
    ) {
        let hub = match &self.local {
            Some(LocalState {
                inbox,
                accept: Some(_),
                ..
            }) => inbox.hub.clone(),
            _ => {
                tracing::warn!(
                    stream,
                    "stream routed in-process, but this runtime has no acceptor; resetting"
                );
                return self.refuse_stream(skey, stream, RESET_CONNECT_FAILED);
            }
        };
        let (app, ends) = stream_pair(&hub, None);
        let Some(key) = self.add_local(LocalConn::new(ends, skey, stream)) else {
            return self.refuse_stream(skey, stream, RESET_CONNECT_FAILED);
        };
        let accepted = Accepted {
            stream: app,
            target: target.clone(),
        };
        let sent = match self.local.as_ref().and_then(|l| l.accept.as_ref()) {
            Some(tx) => tx.send(accepted),
            None => Err(SendError(accepted)),
        };
        if sent.is_err() {
            tracing::warn!(stream, "the program no longer accepts streams; resetting");
            return self.after(key, After::Reset(RESET_CONNECT_FAILED));
        }
        // Handed to the program: the stream's "target" is connected (PROTOCOL.md §4.8).
        if let Some(s) = self.endpoint.get_mut(skey) {
            s.session_mut().confirm_stream(stream);
            self.touch(skey);
        }
        tracing::info!(
            stream,
            target = target.as_deref().unwrap_or(""),
            "stream opened in-process"
        );
    }

    /// Registers an in-process stream of session `skey`.
    fn add_local(&mut self, conn: LocalConn) -> Option<usize> {
        let (skey, stream) = (conn.session, conn.stream);
        let shared = conn.ends.shared.clone();
        match self.add(Entry::Local(Box::new(conn))) {
            Ok(key) => {
                shared.key.store(key, Relaxed);
                self.endpoint[skey].data_mut().streams.insert(stream, key);
                Some(key)
            }
            Err(e) => {
                tracing::warn!(stream, "cannot register an in-process stream: {e}");
                None
            }
        }
    }
}
