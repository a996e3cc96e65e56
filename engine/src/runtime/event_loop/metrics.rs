//! A worker's figures: the plain counters it keeps of events since start, and its answer to a
//! stats request (its sessions, their tunnels with TCP_INFO read now, its forwards).
//!
//! Owns: [`WorkerMetrics`] (this worker's counters and its request inbox) and building the
//! worker's part of a [`crate::runtime::stats::RuntimeStats`]. Must not touch: sockets beyond
//! reading their addresses, TCP_INFO, TCP_CONGESTION and TCP_NOTSENT_LOWAT, or any session
//! state (read through accessors only).
//!
//! The counters are plain integers owned by the worker thread: nothing on the data path is
//! shared or atomic. Counters of sessions still alive are read from the sessions at request
//! time; a session's totals move into [`WorkerMetrics`] when it is let go, so they never go
//! backwards.

use std::net::SocketAddr;
use std::sync::mpsc::TryRecvError;
use std::time::Duration;

use super::app::AppConn;
use super::{Entry, EventLoop, hex};
use crate::endpoint::SessionKey;
use crate::runtime::io::{Driver, IoStream};
use crate::runtime::stats::{
    Counters, ForwardStats, SessionStatsSnapshot, StatsInbox, TcpStats, TunnelStats, WorkerStats,
    rejection_reason, tunnel_loss_reason,
};
use crate::session::SessionStats;

/// Requests answered per turn of the loop at most (the inbox is bounded anyway).
const ANSWERS_PER_TURN: usize = 4;

/// One client forward's counters on this worker.
#[derive(Debug)]
struct ForwardCounters {
    listen: SocketAddr,
    /// Its name now (a reload may rename it).
    name: Option<String>,
    connections: u64,
    /// Bytes of its connections that have closed.
    closed_to_peer: u64,
    closed_from_peer: u64,
}

/// This worker's counters and its stats inbox.
#[derive(Debug, Default)]
pub(super) struct WorkerMetrics {
    worker: usize,
    inbox: Option<StatsInbox>,
    /// Events counted as they happen, and the totals of sessions let go.
    retired: Counters,
    forwards: Vec<ForwardCounters>,
}

impl WorkerMetrics {
    pub(super) fn new(worker: usize, inbox: Option<StatsInbox>) -> Self {
        Self {
            worker,
            inbox,
            ..Self::default()
        }
    }

    /// Client: a forward listening on `listen` (in the runtime's order of forwards; a forward
    /// added by a reload comes after the others, on every worker alike).
    pub(super) fn add_forward(&mut self, listen: SocketAddr, name: Option<String>) -> usize {
        self.forwards.push(ForwardCounters {
            listen,
            name,
            connections: 0,
            closed_to_peer: 0,
            closed_from_peer: 0,
        });
        self.forwards.len() - 1
    }

    /// An application connection accepted on forward `forward`.
    pub(super) fn connection_accepted(&mut self, forward: usize) {
        if let Some(f) = self.forwards.get_mut(forward) {
            f.connections += 1;
        }
    }

    /// Client: an application connection goes; its forward keeps its bytes.
    pub(super) fn connection_done<D: Driver>(&mut self, app: &AppConn<D>) {
        if self.forwards.is_empty() {
            return;
        }
        if let Some(f) = local_addr(&app.sock).and_then(|local| self.forward_of(local)) {
            let f = &mut self.forwards[f];
            f.closed_to_peer += app.bytes_to_peer;
            f.closed_from_peer += app.bytes_from_peer;
        }
    }

    /// Client: forward `forward` was renamed by a reload.
    pub(super) fn rename_forward(&mut self, forward: usize, name: Option<String>) {
        if let Some(f) = self.forwards.get_mut(forward) {
            f.name = name;
        }
    }

    /// The forward whose listener accepted a connection with local address `local`: the
    /// newest one on that address (a reload may have removed a forward and added another on
    /// the same address; a connection of the old one that is still open counts towards the new
    /// one's bytes when they share an address).
    fn forward_of(&self, local: SocketAddr) -> Option<usize> {
        let exact = self.forwards.iter().rposition(|f| f.listen == local);
        exact.or_else(|| {
            self.forwards
                .iter()
                .rposition(|f| f.listen.ip().is_unspecified() && f.listen.port() == local.port())
        })
    }

    pub(super) fn tunnel_lost(&mut self, reason: &crate::error::TunnelError) {
        *self
            .retired
            .tunnels_lost
            .entry(tunnel_loss_reason(reason))
            .or_default() += 1;
    }

    pub(super) fn handshake_rejected(
        &mut self,
        reason: crate::runtime::rejection_log::RejectReason,
    ) {
        *self
            .retired
            .handshakes_rejected
            .entry(rejection_reason(reason))
            .or_default() += 1;
    }

    /// A session is let go: its totals become this worker's.
    pub(super) fn session_retired(&mut self, stats: &SessionStats) {
        add_session_totals(&mut self.retired, stats);
    }
}

fn add_session_totals(counters: &mut Counters, stats: &SessionStats) {
    counters.streams_opened += stats.streams_opened;
    counters.stream_bytes_to_peer += stats.stream_bytes_sent;
    counters.stream_bytes_from_peer += stats.stream_bytes_received;
    counters.frames_resent += stats.frames_resent;
    counters.stream_credit_waits += stats.window.stream_credit_waits;
    counters.stream_window_growths += stats.window.stream_window_growths;
    counters.relief.add(&stats.relief);
}

fn local_addr(sock: &impl std::os::fd::AsFd) -> Option<SocketAddr> {
    socket2::SockRef::from(sock)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
}

fn tcp_stats(sock: &impl std::os::fd::AsFd) -> Option<TcpStats> {
    let info = mtcpd_common::sockopt::tcp_info(sock)?;
    Some(TcpStats {
        rtt: Duration::from_micros(u64::from(info.rtt_us)),
        min_rtt: Duration::from_micros(u64::from(info.min_rtt_us)),
        cwnd_segments: info.snd_cwnd,
        unsent_limit_bytes: mtcpd_common::sockopt::notsent_lowat(sock).unwrap_or(0),
        delivery_rate_bytes_per_second: info.delivery_rate_bps / 8,
        retransmitted_segments: u64::from(info.total_retrans),
        congestion: mtcpd_common::sockopt::congestion_of(sock).unwrap_or_default(),
    })
}

impl<D: Driver> EventLoop<D> {
    /// Answers the stats requests waiting for this worker.
    pub(super) fn answer_stats_requests(&mut self) {
        for _ in 0..ANSWERS_PER_TURN {
            let Some(inbox) = &self.metrics.inbox else {
                return;
            };
            let reply = match inbox.try_recv() {
                Ok(reply) => reply,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.metrics.inbox = None;
                    return;
                }
            };
            // The asker may have given up (its channel is gone, or full): nothing to do then.
            let _ = reply.try_send(self.worker_stats());
        }
    }

    /// This worker's figures now.
    fn worker_stats(&self) -> WorkerStats {
        let mut counters = self.metrics.retired.clone();
        let mut sessions = Vec::new();
        for key in self.endpoint.keys() {
            let Some(snapshot) = self.session_snapshot(key, &mut counters) else {
                continue;
            };
            sessions.push(snapshot);
        }
        let mut forwards: Vec<ForwardStats> = self
            .metrics
            .forwards
            .iter()
            .map(|f| ForwardStats {
                listen: f.listen,
                name: f.name.clone(),
                connections: f.connections,
                bytes_to_peer: f.closed_to_peer,
                bytes_from_peer: f.closed_from_peer,
            })
            .collect();
        // Live connections, so far.
        for (_, entry) in self.entries.iter() {
            if forwards.is_empty() {
                break;
            }
            let Entry::App(app) = entry else { continue };
            let Some(local) = local_addr(&app.sock) else {
                continue;
            };
            let Some(f) = self.metrics.forward_of(local) else {
                continue;
            };
            forwards[f].bytes_to_peer += app.bytes_to_peer;
            forwards[f].bytes_from_peer += app.bytes_from_peer;
        }
        WorkerStats {
            sessions,
            counters,
            forwards,
        }
    }

    /// Session `key`'s figures; its totals are added to `counters`.
    fn session_snapshot(
        &self,
        key: SessionKey,
        counters: &mut Counters,
    ) -> Option<SessionStatsSnapshot> {
        let slot = self.endpoint.get(key)?;
        let session = slot.session();
        let stats = session.stats();
        add_session_totals(counters, &stats);
        let io = slot.data();
        let tunnels =
            (0..session.tunnel_count())
                .map(|t| {
                    let sock = io.tunnels.get(t).copied().flatten().and_then(|k| {
                        match self.entries.get(k) {
                            Some(Entry::Tunnel(t)) => Some(&t.sock),
                            _ => None,
                        }
                    });
                    let (sent_bytes, received_bytes) =
                        io.traffic.get(t).copied().unwrap_or_default();
                    TunnelStats {
                        index: t,
                        peer: sock.and_then(|s| s.peer_addr().ok()),
                        up: session.tunnel_is_active(t),
                        tcp: sock.and_then(tcp_stats),
                        sent_bytes,
                        received_bytes,
                    }
                })
                .collect();
        Some(SessionStatsSnapshot {
            id: hex(session.id()),
            worker: self.metrics.worker,
            streams: stats.streams,
            frames_resent: stats.frames_resent,
            reorder_buffered_bytes: stats.reorder_charged,
            tunnels,
            adaptive_pool: session.adaptive_pool_target(),
            coupled: session.coupled_stats(),
        })
    }
}
