//! A running runtime's figures, read on demand: its sessions, their tunnels (with TCP_INFO read
//! at the moment of the request), streams and bytes, and the counters of events since start.
//!
//! Owns: the public snapshot types ([`RuntimeStats`] and its parts), [`StatsProbe`] (asks every
//! worker for its snapshot and sums them, with a deadline), and the stable label names of
//! tunnel-loss and handshake-rejection reasons. Must not touch: how a worker collects its
//! figures (`event_loop::metrics`), nor how they are shown (the daemon renders them for
//! Prometheus).
//!
//! Nothing on the data path is shared for this: each worker keeps plain counters, and a request
//! travels to it over a bounded channel with a wake-up, like any other message to a worker. A
//! worker answers between two turns of its loop; one that does not answer within the deadline
//! is left out and counted in [`RuntimeStats::workers_missing`], so a stuck worker cannot hang
//! whoever asked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::Waker;
use super::rejection_log::RejectReason;
use crate::error::TunnelError;
use crate::session::ReliefStats;

/// How long [`crate::runtime::Client::stats`] and [`crate::runtime::Server::stats`] wait for
/// the workers' answers.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests a worker may have waiting; a request beyond is not sent (that worker is missing
/// from that snapshot).
const REQUESTS_PER_WORKER: usize = 4;

/// TCP_INFO of one tunnel connection, read when the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TcpStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Smallest round-trip time the kernel has seen on the connection.
    pub min_rtt: Duration,
    /// Congestion window, in segments.
    pub cwnd_segments: u32,
    /// Unsent bytes the socket may hold (TCP_NOTSENT_LOWAT read back; 0 when never set, and
    /// then `net.ipv4.tcp_notsent_lowat` applies).
    pub unsent_limit_bytes: u32,
    /// The kernel's latest delivery-rate estimate, bytes per second.
    pub delivery_rate_bytes_per_second: u64,
    /// Segments retransmitted over the connection's life.
    pub retransmitted_segments: u64,
    /// The congestion control the connection really runs (TCP_CONGESTION read back; empty
    /// when the kernel refuses the call).
    pub congestion: String,
}

/// One tunnel slot of a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelStats {
    /// Slot index in the pool.
    pub index: usize,
    /// The far end of its current connection, if it has one.
    pub peer: Option<SocketAddr>,
    /// Whether it carries frames now.
    pub up: bool,
    /// TCP_INFO of its current connection (`None` without a connection or when the kernel
    /// refuses the call).
    pub tcp: Option<TcpStats>,
    /// Frame bytes (before TLS) sent over this slot, across its connections.
    pub sent_bytes: u64,
    /// Frame bytes (after TLS) received over this slot, across its connections.
    pub received_bytes: u64,
}

/// One session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionStatsSnapshot {
    /// The first 6 bytes of the session id, in hex (as the logs print it).
    pub id: String,
    /// The worker it lives on.
    pub worker: usize,
    /// Live streams.
    pub streams: usize,
    /// Frames re-sent because their tunnel died.
    pub frames_resent: u64,
    /// Out-of-order bytes held in its streams' reorder buffers (what they are charged).
    pub reorder_buffered_bytes: u64,
    /// Its tunnel slots.
    pub tunnels: Vec<TunnelStats>,
    /// Client with `connection_pool_size = "auto"`: the tunnels the adaptive pool keeps now
    /// (`None`: a fixed pool).
    pub adaptive_pool: Option<usize>,
    /// Its coupled cap (`None` with `coupled_pacing` off).
    pub coupled: Option<crate::session::CoupledStats>,
}

/// Counters since the runtime started (summed over workers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Streams opened (by either end).
    pub streams_opened: u64,
    /// Stream bytes sent to the peer (streams closed, plus what live streams sent so far).
    pub stream_bytes_to_peer: u64,
    /// Stream bytes received from the peer (likewise).
    pub stream_bytes_from_peer: u64,
    /// Frames re-sent because their tunnel died, sessions closed and live.
    pub frames_resent: u64,
    /// Times a stream had data to send and no stream credit left (docs/PROTOCOL.md §5.1).
    pub stream_credit_waits: u64,
    /// Times a stream's receive window was doubled by auto-tuning (docs/PROTOCOL.md §5.1).
    pub stream_window_growths: u64,
    /// Tunnels lost, by reason ([`tunnel_loss_reason`]).
    pub tunnels_lost: BTreeMap<&'static str, u64>,
    /// Server handshakes that ended without a tunnel, by reason.
    pub handshakes_rejected: BTreeMap<&'static str, u64>,
    /// Head-of-line relief (`hol_relief`), sessions closed and live.
    pub relief: ReliefStats,
}

impl Counters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.streams_opened += other.streams_opened;
        self.stream_bytes_to_peer += other.stream_bytes_to_peer;
        self.stream_bytes_from_peer += other.stream_bytes_from_peer;
        self.frames_resent += other.frames_resent;
        self.stream_credit_waits += other.stream_credit_waits;
        self.stream_window_growths += other.stream_window_growths;
        self.relief.add(&other.relief);
        for (reason, n) in &other.tunnels_lost {
            *self.tunnels_lost.entry(reason).or_default() += n;
        }
        for (reason, n) in &other.handshakes_rejected {
            *self.handshakes_rejected.entry(reason).or_default() += n;
        }
    }
}

/// A client forward (listen address), over all workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardStats {
    /// Its listen address as bound (in the order of the runtime's forwards; forwards added by a
    /// reload come last, and a removed one stays, with its totals).
    pub listen: SocketAddr,
    /// Its name (the config's `name`), if any.
    pub name: Option<String>,
    /// Application connections accepted.
    pub connections: u64,
    /// Stream bytes its connections sent to the peer.
    pub bytes_to_peer: u64,
    /// Stream bytes its connections received from the peer.
    pub bytes_from_peer: u64,
}

/// Everything a runtime reports at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeStats {
    /// The I/O driver: `mio` or `uring`.
    pub io: &'static str,
    /// Workers of the runtime.
    pub workers: usize,
    /// Workers that did not answer in time (their sessions and counters are missing).
    pub workers_missing: usize,
    /// Live sessions.
    pub sessions: Vec<SessionStatsSnapshot>,
    /// Counters since start.
    pub counters: Counters,
    /// Client: one per forward, in order.
    pub forwards: Vec<ForwardStats>,
}

impl RuntimeStats {
    /// Live streams, all sessions.
    pub fn streams(&self) -> usize {
        self.sessions.iter().map(|s| s.streams).sum()
    }

    /// Reorder-buffered bytes, all sessions.
    pub fn reorder_buffered_bytes(&self) -> u64 {
        self.sessions.iter().map(|s| s.reorder_buffered_bytes).sum()
    }

    /// Tunnels carrying frames, all sessions.
    pub fn tunnels_up(&self) -> usize {
        self.sessions
            .iter()
            .map(|s| s.tunnels.iter().filter(|t| t.up).count())
            .sum()
    }
}

/// One worker's answer.
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    pub(crate) sessions: Vec<SessionStatsSnapshot>,
    pub(crate) counters: Counters,
    pub(crate) forwards: Vec<ForwardStats>,
}

/// A request to a worker: where to send its answer.
pub(crate) type StatsRequest = SyncSender<WorkerStats>;

/// A worker's end: the requests waiting for it.
pub(crate) type StatsInbox = Receiver<StatsRequest>;

/// Asks a runtime's workers for their figures; cheap to clone and usable from any thread.
#[derive(Debug, Clone)]
pub struct StatsProbe {
    io: &'static str,
    workers: Arc<[(SyncSender<StatsRequest>, Arc<Waker>)]>,
}

impl StatsProbe {
    /// A probe for workers woken by `wakers`, and each worker's inbox (same order).
    pub(crate) fn wire(io: &'static str, wakers: &[Arc<Waker>]) -> (Self, Vec<StatsInbox>) {
        let mut inboxes = Vec::with_capacity(wakers.len());
        let mut workers = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::sync_channel(REQUESTS_PER_WORKER);
            workers.push((tx, waker.clone()));
            inboxes.push(rx);
        }
        let probe = Self {
            io,
            workers: workers.into(),
        };
        (probe, inboxes)
    }

    /// Asks every worker and sums what arrives within `timeout`. A worker that has stopped,
    /// has too many requests waiting or answers late is counted in
    /// [`RuntimeStats::workers_missing`].
    pub fn snapshot(&self, timeout: Duration) -> RuntimeStats {
        let deadline = Instant::now() + timeout;
        let (reply, answers) = mpsc::sync_channel(self.workers.len().max(1));
        let mut asked = 0;
        for (requests, waker) in self.workers.iter() {
            match requests.try_send(reply.clone()) {
                Ok(()) => {
                    asked += 1;
                    let _ = waker.wake();
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
            }
        }
        drop(reply);
        let mut stats = RuntimeStats {
            io: self.io,
            workers: self.workers.len(),
            ..RuntimeStats::default()
        };
        let mut answered = 0;
        while answered < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok(worker) => {
                    answered += 1;
                    stats.sessions.extend(worker.sessions);
                    stats.counters.add(&worker.counters);
                    merge_forwards(&mut stats.forwards, worker.forwards);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        stats.workers_missing = stats.workers - answered;
        stats.sessions.sort_by(|a, b| a.id.cmp(&b.id));
        stats
    }
}

/// Adds one worker's forwards (same order on every client worker) into `all`.
fn merge_forwards(all: &mut Vec<ForwardStats>, mine: Vec<ForwardStats>) {
    for (i, f) in mine.into_iter().enumerate() {
        match all.get_mut(i) {
            Some(sum) => {
                sum.connections += f.connections;
                sum.bytes_to_peer += f.bytes_to_peer;
                sum.bytes_from_peer += f.bytes_from_peer;
            }
            None => all.push(f),
        }
    }
}

/// Every value [`tunnel_loss_reason`] gives (so a counter can be shown at 0 before it happens).
pub const TUNNEL_LOSS_REASONS: &[&str] = &[
    "handshake",
    "idle_timeout",
    "unacknowledged",
    "connection_lost",
    "replaced",
    "retired",
    "session_closed",
];

/// Every `reason` of [`Counters::handshakes_rejected`].
pub const REJECTION_REASONS: &[&str] = &[
    "wrong_key",
    "closed_after_proof",
    "bad_magic",
    "malformed",
    "unsupported_version",
    "refused",
    "timeout",
    "closed_early",
    "too_many_handshakes",
    "too_many_from_source",
    "handoff_backlog_full",
    "stale_handoff",
    "input_too_large",
    "out_of_files",
    "tls",
    "plaintext_client",
    "tls_client",
];

/// The `reason` label of a lost tunnel.
pub fn tunnel_loss_reason(e: &TunnelError) -> &'static str {
    match e {
        TunnelError::Handshake(_) => "handshake",
        TunnelError::IdleTimeout(_) => "idle_timeout",
        TunnelError::Unacknowledged(_) => "unacknowledged",
        TunnelError::ConnectionLost(_) => "connection_lost",
        TunnelError::Replaced => "replaced",
        TunnelError::Retired => "retired",
        TunnelError::SessionClosed => "session_closed",
    }
}

/// The `reason` label of a refused server handshake.
pub(crate) fn rejection_reason(r: RejectReason) -> &'static str {
    match r {
        RejectReason::WrongKey => "wrong_key",
        RejectReason::ClosedAfterProof => "closed_after_proof",
        RejectReason::BadMagic => "bad_magic",
        RejectReason::Malformed(_) => "malformed",
        RejectReason::UnsupportedVersion => "unsupported_version",
        RejectReason::Refused(_) => "refused",
        RejectReason::Timeout => "timeout",
        RejectReason::ClosedEarly => "closed_early",
        RejectReason::TooManyHandshakes => "too_many_handshakes",
        RejectReason::TooManyFromSource => "too_many_from_source",
        RejectReason::HandoffBacklogFull => "handoff_backlog_full",
        RejectReason::StaleHandoff => "stale_handoff",
        RejectReason::InputTooLarge => "input_too_large",
        RejectReason::OutOfFiles => "out_of_files",
        RejectReason::Tls => "tls",
        RejectReason::PlaintextClient => "plaintext_client",
        RejectReason::TlsClient => "tls_client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_by_reason() {
        let mut a = Counters {
            streams_opened: 2,
            relief: ReliefStats {
                frames_resent: 5,
                ..ReliefStats::default()
            },
            ..Counters::default()
        };
        a.tunnels_lost.insert("idle_timeout", 1);
        let mut b = a.clone();
        b.tunnels_lost.insert("replaced", 3);
        a.add(&b);
        assert_eq!(a.streams_opened, 4);
        assert_eq!(a.relief.frames_resent, 10);
        assert_eq!(a.tunnels_lost["idle_timeout"], 2);
        assert_eq!(a.tunnels_lost["replaced"], 3);
    }

    #[test]
    fn a_worker_that_does_not_answer_costs_the_deadline_and_its_queue_is_bounded() {
        let (_driver, waker) = super::super::io::Mio::new().expect("a mio driver");
        // Nobody reads this worker's inbox: it is "stuck".
        let (probe, _inboxes) = StatsProbe::wire("mio", &[Arc::new(waker)]);
        let started = Instant::now();
        let stats = probe.snapshot(Duration::from_millis(50));
        assert_eq!((stats.workers, stats.workers_missing), (1, 1));
        assert!(started.elapsed() < Duration::from_secs(2));
        for _ in 1..REQUESTS_PER_WORKER {
            probe.snapshot(Duration::from_millis(1));
        }
        // The inbox is full now: the next request is not even sent, and returns at once.
        let started = Instant::now();
        let stats = probe.snapshot(Duration::from_secs(5));
        assert_eq!(stats.workers_missing, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn every_reason_label_is_listed() {
        use crate::handshake::{HandshakeError, HelloStatus};
        let losses = [
            TunnelError::Handshake(HandshakeError::Timeout),
            TunnelError::IdleTimeout(Duration::ZERO),
            TunnelError::Unacknowledged(Duration::ZERO),
            TunnelError::ConnectionLost(String::new()),
            TunnelError::Replaced,
            TunnelError::Retired,
            TunnelError::SessionClosed,
        ];
        for e in &losses {
            assert!(TUNNEL_LOSS_REASONS.contains(&tunnel_loss_reason(e)));
        }
        let rejections = [
            RejectReason::WrongKey,
            RejectReason::ClosedAfterProof,
            RejectReason::BadMagic,
            RejectReason::Malformed("x"),
            RejectReason::UnsupportedVersion,
            RejectReason::Refused(HelloStatus::TooManySessions),
            RejectReason::Timeout,
            RejectReason::ClosedEarly,
            RejectReason::TooManyHandshakes,
            RejectReason::TooManyFromSource,
            RejectReason::HandoffBacklogFull,
            RejectReason::StaleHandoff,
            RejectReason::InputTooLarge,
            RejectReason::OutOfFiles,
            RejectReason::Tls,
            RejectReason::PlaintextClient,
            RejectReason::TlsClient,
        ];
        for r in rejections {
            assert!(REJECTION_REASONS.contains(&rejection_reason(r)));
        }
        assert_eq!(rejections.len(), REJECTION_REASONS.len());
        assert_eq!(losses.len(), TUNNEL_LOSS_REASONS.len());
    }

    #[test]
    fn forwards_are_summed_by_position() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7000));
        let one = ForwardStats {
            listen: addr,
            name: None,
            connections: 1,
            bytes_to_peer: 10,
            bytes_from_peer: 20,
        };
        let mut all = Vec::new();
        merge_forwards(&mut all, vec![one.clone()]);
        merge_forwards(&mut all, vec![one]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].connections, 2);
        assert_eq!(all[0].bytes_from_peer, 40);
    }
}
