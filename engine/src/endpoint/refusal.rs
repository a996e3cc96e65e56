//! A client turned away for good: a server that rejects our key (or needs one we lack), one that
//! cannot prove our key, or one that speaks another protocol, will refuse the next session exactly as it refused this
//! one, so the client waits longer and longer before trying again and says so once, not at
//! every attempt.
//!
//! Owns: classifying why a client session ended ([`Refusal`]), the exponential wait before the
//! next session dials (from [`FIRST_RETRY`] up to [`Config::refused_backoff_max`], with jitter),
//! and which refusals are worth a log line ([`RefusalReport`]). Must not touch: sessions (it
//! reads a closed one), dialing (the next session's first dial is given its instant) or logging
//! (the runtime writes what [`ClientRefused`] says).

use std::time::{Duration, Instant};

use rand::Rng;
use thiserror::Error;

use crate::config::Config;
use crate::error::SessionError;
use crate::handshake::{HandshakeError, HelloStatus};
use crate::session::Session;

/// The wait after the first refusal; it doubles with each refusal in a row.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// While the same refusal repeats, one summary at most this often (the others are only worth a
/// debug line).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(600);

/// Why the server will refuse every session of this client until a configuration changes.
/// Displayed after "server ADDR ".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This client has no key, and the server rejected its proof: it needs one.
    #[error("requires a key (this client has none; make one with `mtcpd genkey`)")]
    KeyRequired,
    /// The server rejected our proof: its key differs from ours (or it has none).
    #[error("rejected our key (the keys differ, or the server has none)")]
    KeyRejected,
    /// The server's proof does not verify with our key: the keys differ, or it is not an
    /// mtcpd server.
    #[error("failed to prove the key: wrong key or not an mtcpd server")]
    KeyNotProved,
    /// The server answered in another protocol or version.
    #[error("is not compatible: {0}")]
    Incompatible(HandshakeError),
}

impl Refusal {
    /// Why `session` ended, if it was a permanent refusal: the session closed on a handshake
    /// failure before it was ever established ([`SessionError::Handshake`]).
    pub fn of(session: &Session, have_key: bool) -> Option<Self> {
        if session.is_established() {
            return None;
        }
        match session.close_reason()? {
            SessionError::Handshake(HandshakeError::Refused(HelloStatus::AuthFailed)) => {
                Some(if have_key {
                    Self::KeyRejected
                } else {
                    Self::KeyRequired
                })
            }
            SessionError::Handshake(HandshakeError::WrongKey) => Some(Self::KeyNotProved),
            SessionError::Handshake(e) => Some(Self::Incompatible(e.clone())),
            _ => None,
        }
    }
}

/// How loudly a refusal should be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReport {
    /// The first of a run of refusals (or a different one than before): an error.
    First,
    /// The same refusal again, [`REPORT_INTERVAL`] after the last report: a summary.
    StillRefused {
        /// Refusals since the last report, this one included.
        since_last_report: u32,
    },
    /// The same refusal again, reported recently: a debug line at most.
    Repeated,
}

/// A client session was refused for good; the next one waits `retry_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRefused {
    /// Why.
    pub refusal: Refusal,
    /// Sessions refused in a row, this one included.
    pub in_a_row: u32,
    /// When the next session dials, from now.
    pub retry_in: Duration,
    /// How loudly to say it.
    pub report: RefusalReport,
}

/// The client's memory of refusals across its successive sessions.
#[derive(Debug, Default)]
pub struct RefusalBackoff {
    last: Option<Refusal>,
    in_a_row: u32,
    last_report: Option<Instant>,
    since_report: u32,
}

impl RefusalBackoff {
    /// Sessions refused in a row so far (0: the last session was not refused).
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }

    /// A client session closed at `now`: returns when its replacement may first dial, and the
    /// refusal if that is why it closed. Any other end (an established session that failed, a
    /// local close) starts afresh: the replacement dials at once.
    pub fn on_session_closed(
        &mut self,
        now: Instant,
        closed: &Session,
        config: &Config,
        rng: &mut impl Rng,
    ) -> (Instant, Option<ClientRefused>) {
        let Some(refusal) = Refusal::of(closed, !config.psk.is_empty()) else {
            *self = Self::default();
            return (now, None);
        };
        let same = self.last.as_ref() == Some(&refusal);
        if !same {
            *self = Self::default();
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.since_report = self.since_report.saturating_add(1);
        let report = match self.last_report {
            None => RefusalReport::First,
            Some(at) if now.saturating_duration_since(at) >= REPORT_INTERVAL => {
                RefusalReport::StillRefused {
                    since_last_report: self.since_report,
                }
            }
            Some(_) => RefusalReport::Repeated,
        };
        if report != RefusalReport::Repeated {
            self.last_report = Some(now);
            self.since_report = 0;
        }
        self.last = Some(refusal.clone());
        let exp = (self.in_a_row - 1).min(20);
        let ceiling = FIRST_RETRY
            .saturating_mul(1 << exp)
            .min(config.refused_backoff_max);
        // A uniform draw in [d/2, d]: clients refused together do not return together.
        let retry_in = ceiling.mul_f64(rng.random_range(0.5..=1.0));
        let refused = ClientRefused {
            refusal,
            in_a_row: self.in_a_row,
            retry_in,
            report,
        };
        (now + retry_in, Some(refused))
    }
}
