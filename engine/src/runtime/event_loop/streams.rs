//! The one interface both kinds of stream connection offer: a socket ([`super::app`]) and an
//! in-process stream ([`super::local_streams`]).
//!
//! Owns: [`StreamConn`], the dispatch of a session's stream events to it (each event reaches the
//! stream's connection once, whatever its kind), and what the loop does after a call ([`After`]).
//! Must not touch: how either kind moves its bytes (their own files).

use super::{Entry, EventLoop};
use crate::endpoint::SessionKey;
use crate::runtime::io::Driver;
use crate::session::{Session, StreamId};

/// What the loop does with a stream's connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// Keep it.
    Keep,
    /// Drop it and its stream mapping (both directions are finished, or the stream failed and
    /// the session knows).
    Close,
    /// Drop it and reset its stream with this code.
    Reset(u32),
}

/// A connection that carries one stream of a session: bytes go both ways between it and the
/// session, and the session's stream events arrive here.
pub(super) trait StreamConn {
    /// The session the stream belongs to.
    fn session(&self) -> SessionKey;
    /// The stream.
    fn stream(&self) -> StreamId;
    /// Moves the application's bytes into the stream as far as the session takes them (on
    /// `StreamWritable`, or when the application has more). `buf` is the loop's read buffer.
    fn to_session(&mut self, session: &mut Session, buf: &mut [u8]) -> After;
    /// Moves the stream's bytes to the application as far as it keeps up (on `StreamReadable`,
    /// or when the application made room).
    fn to_app(&mut self, session: &mut Session) -> After;
    /// The peer reset the stream (the connection is dropped next).
    fn peer_reset(&mut self, code: u32);
    /// The session forgot the stream; true when the connection is finished too (otherwise it
    /// finishes its own half-closes).
    fn stream_closed(&mut self) -> bool;
    /// The session closed under the stream (the connection is dropped next).
    fn session_lost(&mut self);
    /// The peer confirmed a stream this end opened (`StreamConfirmed`): its target is
    /// connected.
    fn confirmed(&mut self) {}
}

impl<D: Driver> Entry<D> {
    /// The entry as a stream connection, if it is one.
    fn stream_conn(&mut self) -> Option<&mut dyn StreamConn> {
        match self {
            Entry::App(app) => Some(app.as_mut()),
            Entry::Local(local) => Some(local.as_mut()),
            _ => None,
        }
    }
}

impl<D: Driver> EventLoop<D> {
    /// The application's bytes into the stream at `key`.
    pub(super) fn stream_to_session(&mut self, key: usize) {
        let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) else {
            return;
        };
        let skey = conn.session();
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let after = conn.to_session(slot.session_mut(), &mut self.read_buf);
        self.touch(skey);
        self.after(key, after);
    }

    /// The stream's bytes to the application at `key`.
    pub(super) fn stream_to_app(&mut self, key: usize) {
        let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) else {
            return;
        };
        let skey = conn.session();
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let after = conn.to_app(slot.session_mut());
        self.touch(skey);
        self.after(key, after);
    }

    /// Does what a stream connection asked for.
    pub(super) fn after(&mut self, key: usize, after: After) {
        match after {
            After::Keep => {}
            After::Close => self.close_stream(key),
            After::Reset(code) => {
                let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) else {
                    return;
                };
                let (skey, stream) = (conn.session(), conn.stream());
                self.close_stream(key);
                if let Some(s) = self.endpoint.get_mut(skey) {
                    let _ = s.session_mut().reset(stream, code);
                    self.touch(skey);
                }
            }
        }
    }

    /// Drops a stream connection and its stream mapping (slab keys are reused, so a stale
    /// mapping would route another connection's events).
    pub(super) fn close_stream(&mut self, key: usize) {
        let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) else {
            return;
        };
        let (skey, stream) = (conn.session(), conn.stream());
        if let Some(s) = self.endpoint.get_mut(skey) {
            s.data_mut().forget_stream(stream, key);
        }
        self.remove(key);
    }

    /// `StreamConfirmed` for the connection at `key`: it may answer its application and start
    /// moving bytes.
    pub(super) fn stream_confirmed(&mut self, key: usize) {
        if let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) {
            conn.confirmed();
            self.stream_to_app(key);
            self.stream_to_session(key);
        }
    }

    /// `StreamReset` for the connection at `key` (its mapping is already gone).
    pub(super) fn stream_reset_by_peer(&mut self, key: usize, code: u32) {
        if let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) {
            conn.peer_reset(code);
            self.remove(key);
        }
    }

    /// `StreamClosed` for the connection at `key` (its mapping is already gone).
    pub(super) fn stream_closed(&mut self, key: usize) {
        if let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn)
            && conn.stream_closed()
        {
            self.remove(key);
        }
    }

    /// The session closed: its stream connection at `key` fails and goes.
    pub(super) fn stream_session_lost(&mut self, key: usize) {
        if let Some(conn) = self.entries.get_mut(key).and_then(Entry::stream_conn) {
            conn.session_lost();
        }
        self.remove(key);
    }

    /// Resets `stream` of session `skey` (no connection carries it).
    pub(super) fn refuse_stream(&mut self, skey: SessionKey, stream: StreamId, code: u32) {
        if let Some(s) = self.endpoint.get_mut(skey) {
            let _ = s.session_mut().reset(stream, code);
            self.touch(skey);
        }
    }
}
