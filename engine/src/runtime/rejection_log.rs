//! The server's log of refused tunnel handshakes, aggregated: a client with the wrong key, a port
//! scanner or a flood of half-open connections must not cost one warning per connection.
//!
//! Owns: [`RejectReason`] (why a server handshake ended without a tunnel, as logged), and
//! [`RejectionLog`]: per (reason, source address) the first rejection is a line at once, then
//! at most one line per [`RejectionLog::interval`] with the count since the previous line. Its
//! table is bounded ([`RejectionLog::capacity`]): quiet entries are evicted, and rejections that
//! find the table full of busy sources are counted per reason and summarised once per interval.
//! One log serves all the workers of a runtime ([`SharedRejectionLog`]; a rejection costs one
//! uncontended lock, and each worker asks for due summaries once a second). Must not touch:
//! sockets or handshakes (the event loop records what the endpoint decided) or
//! how lines are written (it returns [`RejectionLine`]s; the caller logs them).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::PreauthRefusal;
use crate::handshake::{HandshakeError, HelloStatus};

/// Why a server handshake ended without a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RejectReason {
    /// The client's proof did not verify (answered AuthFailed): it has another key, or none,
    /// or its hello was altered or replayed from another connection.
    WrongKey,
    /// The client hung up after our ServerHello: it could not verify our proof (its key
    /// differs, or it has none), or it is not an mtcpd client.
    ClosedAfterProof,
    /// The bytes were not an mtcpd handshake.
    BadMagic,
    /// An mtcpd handshake with impossible fields.
    Malformed(&'static str),
    /// Another protocol version.
    UnsupportedVersion,
    /// Refused with this status (admission, pool size, unknown session, shutting down).
    Refused(HelloStatus),
    /// The handshake did not finish in time.
    Timeout,
    /// The connection closed or failed before our proof was sent.
    ClosedEarly,
    /// Closed at accept: the worker had `max_handshakes` in progress.
    TooManyHandshakes,
    /// Closed at accept: the source's /24 (or /64) had `max_handshakes_per_source` in progress.
    TooManyFromSource,
    /// Closed while handed to another worker: the hand-off backlog was full.
    HandoffBacklogFull,
    /// Closed when another worker took it over: the pre-auth deadline had passed meanwhile.
    StaleHandoff,
    /// The peer sent more than the handshake may hold before it was done.
    InputTooLarge,
    /// Accepted and closed at once: the process was out of file descriptors.
    OutOfFiles,
    /// The TLS handshake failed, or a record failed authentication.
    Tls,
    /// The client speaks plaintext to this TLS server.
    PlaintextClient,
    /// The client speaks TLS to this plaintext (`insecure_plaintext`) server.
    TlsClient,
}

impl RejectReason {
    /// The reason of a connection whose TLS layer failed with `e`.
    pub(crate) fn of_tls(e: &crate::tls::TlsError) -> Self {
        match e {
            crate::tls::TlsError::PeerSpeaksPlaintext => Self::PlaintextClient,
            crate::tls::TlsError::PeerSpeaksTls => Self::TlsClient,
            _ => Self::Tls,
        }
    }

    /// The reason of a handshake that failed with `e`.
    pub(crate) fn of(e: &HandshakeError) -> Self {
        match e {
            HandshakeError::WrongKey => Self::WrongKey,
            HandshakeError::BadMagic => Self::BadMagic,
            HandshakeError::Malformed(what) => Self::Malformed(what),
            HandshakeError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            HandshakeError::Refused(status) => Self::Refused(*status),
            HandshakeError::Timeout => Self::Timeout,
        }
    }

    /// The reason a connection was refused before its handshake started.
    pub(crate) fn of_preauth(refusal: &PreauthRefusal) -> Self {
        match refusal {
            PreauthRefusal::TooManyHandshakes { .. } | PreauthRefusal::NotAServer => {
                Self::TooManyHandshakes
            }
            PreauthRefusal::TooManyFromSource { .. } => Self::TooManyFromSource,
        }
    }

    /// A failed proof of the key, either way: worth a warning even once.
    pub(crate) fn is_authentication(self) -> bool {
        matches!(self, Self::WrongKey | Self::ClosedAfterProof)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongKey => out.write_str(
                "the client's proof failed (its key differs or it has none, or the hello was \
                 altered or replayed)",
            ),
            Self::ClosedAfterProof => out.write_str(
                "the client hung up after our proof (its key differs, or it has none, or it is \
                 not an mtcpd client)",
            ),
            Self::BadMagic => out.write_str("not an mtcpd handshake (bad magic)"),
            Self::Malformed(what) => write!(out, "malformed handshake: {what}"),
            Self::UnsupportedVersion => out.write_str("unsupported protocol version"),
            Self::Refused(status) => write!(out, "answered {status:?}"),
            Self::Timeout => out.write_str("handshake timed out"),
            Self::ClosedEarly => out.write_str("connection closed during the handshake"),
            Self::TooManyHandshakes => out.write_str(
                "too many handshakes in progress on this worker (limits.max_handshakes_per_worker)",
            ),
            Self::TooManyFromSource => out.write_str(
                "too many handshakes in progress from this /24 or /64 \
                 (limits.max_handshakes_per_source)",
            ),
            Self::HandoffBacklogFull => {
                out.write_str("the hand-off backlog between workers is full")
            }
            Self::StaleHandoff => {
                out.write_str("handed between workers past the pre-auth deadline")
            }
            Self::InputTooLarge => {
                out.write_str("sent more than 16 KiB before the handshake was done")
            }
            Self::OutOfFiles => out.write_str("out of file descriptors: closed at once"),
            Self::Tls => out.write_str("TLS failed"),
            Self::PlaintextClient => out.write_str(
                "not TLS (a plaintext mtcpd client? set insecure_plaintext on both ends or \
                 neither)",
            ),
            Self::TlsClient => {
                out.write_str("client speaks TLS; set insecure_plaintext on both ends or neither")
            }
        }
    }
}

/// One line to log: `count` rejections for `reason` from `source` (`None`: from sources beyond
/// the table) since the previous line for them; `first` when there was none (count 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RejectionLine {
    pub(crate) reason: RejectReason,
    pub(crate) source: Option<IpAddr>,
    pub(crate) count: u64,
    pub(crate) first: bool,
}

#[derive(Debug)]
struct Tally {
    last_line: Instant,
    unreported: u64,
}

/// Rejections per (reason, source), rate-limited and bounded (see the module docs).
#[derive(Debug)]
pub(crate) struct RejectionLog {
    interval: Duration,
    capacity: usize,
    tallies: HashMap<(RejectReason, IpAddr), Tally>,
    /// Rejections that found the table full, per reason, and when they were last reported.
    overflow: HashMap<RejectReason, Tally>,
    next_sweep: Instant,
}

/// One log for all the workers of a runtime, so that a source's rejections are counted together
/// whichever worker accepted them.
pub(crate) type SharedRejectionLog = Arc<Mutex<RejectionLog>>;

/// How often [`RejectionLog::flush`] looks at the table at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl RejectionLog {
    /// The daemon's log: one line per (reason, source) a minute, 256 sources tracked.
    pub(crate) fn new(now: Instant) -> Self {
        Self::with_limits(now, Duration::from_secs(60), 256)
    }

    /// [`RejectionLog::new`], to share between workers.
    pub(crate) fn shared(now: Instant) -> SharedRejectionLog {
        Arc::new(Mutex::new(Self::new(now)))
    }

    /// A log with its own interval between lines and table bound.
    pub(crate) fn with_limits(now: Instant, interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            tallies: HashMap::new(),
            overflow: HashMap::new(),
            next_sweep: now + SWEEP_EVERY,
        }
    }

    /// Least time between two lines for the same (reason, source).
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Most sources tracked at once.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tallies.len()
    }

    /// Records a rejection; returns the line to log now, if one is due.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        reason: RejectReason,
        source: IpAddr,
    ) -> Option<RejectionLine> {
        if let Some(tally) = self.tallies.get_mut(&(reason, source)) {
            tally.unreported += 1;
            return Self::due(tally, now, self.interval).map(|count| RejectionLine {
                reason,
                source: Some(source),
                count,
                first: false,
            });
        }
        if self.tallies.len() >= self.capacity {
            self.evict_quiet(now);
        }
        if self.tallies.len() >= self.capacity {
            let tally = self.overflow.entry(reason).or_insert(Tally {
                last_line: now,
                unreported: 0,
            });
            tally.unreported += 1;
            return None;
        }
        self.tallies.insert(
            (reason, source),
            Tally {
                last_line: now,
                unreported: 0,
            },
        );
        Some(RejectionLine {
            reason,
            source: Some(source),
            count: 1,
            first: true,
        })
    }

    /// The summaries that are due (rejections counted since a line, an interval ago), and
    /// forgets sources quiet for an interval. Cheap to call on every turn of a loop.
    pub(crate) fn flush(&mut self, now: Instant) -> Vec<RejectionLine> {
        let mut lines = Vec::new();
        if now < self.next_sweep {
            return lines;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let interval = self.interval;
        for (&(reason, source), tally) in &mut self.tallies {
            if let Some(count) = Self::due(tally, now, interval) {
                lines.push(RejectionLine {
                    reason,
                    source: Some(source),
                    count,
                    first: false,
                });
            }
        }
        for (&reason, tally) in &mut self.overflow {
            if let Some(count) = Self::due(tally, now, interval) {
                lines.push(RejectionLine {
                    reason,
                    source: None,
                    count,
                    first: false,
                });
            }
        }
        self.evict_quiet(now);
        self.overflow.retain(|_, t| t.unreported > 0);
        lines
    }

    /// The count to report for `tally` at `now`, if it has one and its interval has passed.
    fn due(tally: &mut Tally, now: Instant, interval: Duration) -> Option<u64> {
        if tally.unreported == 0 || now.saturating_duration_since(tally.last_line) < interval {
            return None;
        }
        let count = std::mem::take(&mut tally.unreported);
        tally.last_line = now;
        Some(count)
    }

    /// Forgets sources with nothing unreported whose last line is an interval old: their next
    /// rejection would be a line at once anyway.
    fn evict_quiet(&mut self, now: Instant) {
        let interval = self.interval;
        self.tallies.retain(|_, t| {
            t.unreported > 0 || now.saturating_duration_since(t.last_line) < interval
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn first_rejection_is_a_line_then_one_summary_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut log = RejectionLog::with_limits(t0, Duration::from_secs(60), 8);
        let first = log.record(t0, RejectReason::WrongKey, ip(1));
        assert_eq!(
            first,
            Some(RejectionLine {
                reason: RejectReason::WrongKey,
                source: Some(ip(1)),
                count: 1,
                first: true,
            })
        );
        // 4 per second for a minute: nothing more until the interval has passed.
        let mut lines = 0;
        for i in 1..240u32 {
            let now = t0 + Duration::from_millis(250) * i;
            lines += usize::from(log.record(now, RejectReason::WrongKey, ip(1)).is_some());
            lines += log.flush(now).len();
        }
        assert_eq!(lines, 0, "no line within the interval");
        let later = t0 + Duration::from_secs(61);
        let summary = log.flush(later);
        assert_eq!(
            summary,
            vec![RejectionLine {
                reason: RejectReason::WrongKey,
                source: Some(ip(1)),
                count: 239,
                first: false,
            }]
        );
        // Another reason from the same source is its own line.
        assert!(log.record(later, RejectReason::Timeout, ip(1)).is_some());
        // Nothing unreported: the next sweep an interval later forgets both.
        assert!(log.flush(later + Duration::from_secs(121)).is_empty());
        assert_eq!(log.tracked(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_overflow_is_counted_per_reason() {
        let t0 = Instant::now();
        let mut log = RejectionLog::with_limits(t0, Duration::from_secs(60), 4);
        let mut immediate = 0;
        for i in 0..100u8 {
            immediate += usize::from(log.record(t0, RejectReason::ClosedEarly, ip(i)).is_some());
            // Each source twice: nobody in the table is quiet, so nobody is evicted.
            log.record(t0, RejectReason::ClosedEarly, ip(i));
        }
        assert_eq!(immediate, log.capacity(), "one line per tracked source");
        assert_eq!(log.tracked(), 4);
        let lines = log.flush(t0 + log.interval());
        let beyond: Vec<_> = lines.iter().filter(|l| l.source.is_none()).collect();
        assert_eq!(beyond.len(), 1);
        assert_eq!(
            beyond[0].count, 192,
            "96 sources beyond the table, twice each"
        );
        let tracked: u64 = lines.iter().filter_map(|l| l.source.map(|_| l.count)).sum();
        assert_eq!(tracked, 4, "the second rejection of each tracked source");
        assert_eq!(lines.len(), 5, "bounded: table plus one per reason");
    }

    #[test]
    fn a_quiet_source_makes_room_for_a_new_one() {
        let t0 = Instant::now();
        let mut log = RejectionLog::with_limits(t0, Duration::from_secs(10), 1);
        assert!(log.record(t0, RejectReason::WrongKey, ip(1)).is_some());
        // Full, and ip(1) was reported less than an interval ago: counted beyond the table.
        assert!(log.record(t0, RejectReason::WrongKey, ip(2)).is_none());
        let later = t0 + Duration::from_secs(11);
        assert!(log.record(later, RejectReason::WrongKey, ip(3)).is_some());
        assert_eq!(log.tracked(), 1);
    }
}
