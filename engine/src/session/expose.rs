//! Reverse tunnels, the session's part: a client tells its server which services it exposes
//! (one EXPOSE frame, docs/PROTOCOL.md §4.9), and the server learns the names.
//!
//! Owns: [`Session::expose`] (client: queue the names), the EXPOSE frame on receipt (server:
//! [`Event::PeerExposed`] when the set changes), and what a client's EXPOSE is rebuilt from on
//! resend. Must not touch: opening the streams a reverse tunnel carries (any end opens streams
//! with [`Session::open_stream`]; the server's come with its own stream-id parity), nor what
//! the names are bound to (the runtime decides that from its own configuration).

use bytes::Bytes;
use thiserror::Error;

use super::retransmit::Reliable;
use super::{Event, Role, Session};
use crate::error::SessionError;
use crate::wire;

/// Why [`Session::expose`] refused the names.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ExposeError {
    /// Only a client exposes services; a server names its reverse listeners in its own config.
    #[error("only a client exposes services")]
    NotAClient,
    /// A name is not 1 to 63 ASCII letters, digits, `.`, `_` or `-`, repeats, or the names do
    /// not fit one EXPOSE frame (1024 bytes, a length byte each).
    #[error(
        "exposed names must be 1 to {max} ASCII letters, digits, '.', '_' or '-', distinct, and \
         fit in {body} bytes with a length byte each",
        max = wire::MAX_EXPOSE_NAME,
        body = wire::MAX_EXPOSE_BODY
    )]
    BadNames,
    /// The session has closed.
    #[error("the session is closed")]
    SessionClosed,
}

impl Session {
    /// Client: tells the server which services this end connects server-opened streams to
    /// (their names; the targets stay here). Queued at once, sent on the first tunnel up, and
    /// resent like any reliable frame; calling it again replaces the set. An empty list
    /// withdraws every name. With [`crate::Config::zero_rtt`] off, this dials the pool (as a
    /// first stream would).
    pub fn expose<S: AsRef<str>>(&mut self, names: &[S]) -> Result<(), ExposeError> {
        if self.role != Role::Client {
            return Err(ExposeError::NotAClient);
        }
        if self.closed.is_some() {
            return Err(ExposeError::SessionClosed);
        }
        let body = wire::encode_expose_names(names).ok_or(ExposeError::BadNames)?;
        self.exposed = Some(body);
        self.control.push_back(Reliable::Expose);
        if self.pool_deferred {
            // Zero-RTT is off, but a client that exposes services must be reachable: the
            // server can only open their streams over tunnels that are up.
            self.dial_pool_soon();
        }
        Ok(())
    }

    /// Server: the names the client exposes now (empty until its EXPOSE arrives).
    pub fn peer_exposed(&self) -> &[String] {
        &self.peer_exposed
    }

    /// An EXPOSE frame arrived. A client never receives one from a server.
    pub(super) fn on_expose(&mut self, names: Bytes) -> Result<(), SessionError> {
        if self.role != Role::Server {
            return Err(SessionError::Protocol("EXPOSE sent by a server".into()));
        }
        // Checked when parsed; a resend of the same frame changes nothing.
        let names = wire::expose_names(&names)
            .map_err(|source| SessionError::Frame { tunnel: 0, source })?;
        if names != self.peer_exposed {
            self.peer_exposed = names.clone();
            self.events.push_back(Event::PeerExposed { names });
        }
        Ok(())
    }

    /// What a retained EXPOSE is sent as: the current set (a newer call replaced it).
    pub(super) fn expose_body(&self) -> Option<Bytes> {
        self.exposed.clone()
    }
}
