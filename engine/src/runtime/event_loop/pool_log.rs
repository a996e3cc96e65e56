//! What a client says about its pool: each tunnel established or lost once, the pool the server
//! granted once, and a server outage as a few lines (the first failed attempt, a summary with
//! counts and the next attempt every [`OUTAGE_REPORT_INTERVAL`], and the end of it) instead of
//! lines per tunnel per attempt. With several servers, a move to the next one is one line too
//! (`server A unreachable (why); trying B`), and the outage spans the servers tried.
//!
//! Owns: the client's per-worker record of which slots have carried frames, the outage being
//! reported and its counts. Must not touch: dialing, backoff or any session state (it is told
//! what happened and reads the next re-dial time the session computed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::TunnelError;
use crate::runtime::server_list::Move;

/// How often a continuing outage is summarised (attempts in between are logged at debug).
pub(super) const OUTAGE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Failed attempts to reach the server since the last tunnel was established.
#[derive(Debug)]
struct Outage {
    /// The server it started on.
    server: SocketAddr,
    since: Instant,
    attempts: u64,
    attempts_since_report: u64,
    next_report: Instant,
}

/// One client worker's pool, as its log tells it.
#[derive(Debug, Default)]
pub(super) struct PoolLog {
    /// The session the slots below belong to.
    session: String,
    /// Slots that carried frames and have not been lost since.
    up: Vec<bool>,
    /// "granted N of M" was said for this session.
    granted_said: bool,
    /// The congestion control its tunnels run was said for this session.
    congestion_said: bool,
    outage: Option<Outage>,
}

/// A pool's figures at one moment, read from its session.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolNow {
    pub(super) server: SocketAddr,
    pub(super) now: Instant,
    pub(super) active: usize,
    pub(super) granted: usize,
    pub(super) proposed: usize,
    pub(super) next_attempt: Option<Instant>,
}

fn until(at: Option<Instant>, now: Instant) -> Duration {
    at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
}

impl PoolLog {
    fn slots_of(&mut self, session: &str) -> &mut Vec<bool> {
        if self.session != session {
            self.session = session.to_owned();
            self.up.clear();
            self.granted_said = false;
            self.congestion_said = false;
        }
        &mut self.up
    }

    /// Slot `t` of `session` carries frames.
    pub(super) fn tunnel_up(
        &mut self,
        session: &str,
        t: u16,
        rtt: Duration,
        congestion: &str,
        asked: Option<&str>,
        pool: PoolNow,
    ) {
        let (server, now) = (pool.server, pool.now);
        let up = self.slots_of(session);
        let slot = usize::from(t);
        if up.len() <= slot {
            up.resize(slot + 1, false);
        }
        up[slot] = true;
        tracing::info!(%session, tunnel = t, ?rtt, %congestion, "tunnel established");
        if !self.congestion_said {
            self.congestion_said = true;
            crate::runtime::sockopt::log_session_congestion(session, asked, congestion);
        }
        if let Some(outage) = self.outage.take_if(|o| o.server != server) {
            tracing::info!(
                %server,
                down_for = ?now.saturating_duration_since(outage.since),
                failed_attempts = outage.attempts,
                "connected to server {server} after {:.1?} and {} failed attempts (from server \
                 {} on)",
                now.saturating_duration_since(outage.since),
                outage.attempts,
                outage.server
            );
        }
        if let Some(outage) = self.outage.take() {
            tracing::info!(
                %server,
                down_for = ?now.saturating_duration_since(outage.since),
                failed_attempts = outage.attempts,
                "server {server} reachable again after {:.1?} and {} failed attempts; \
                 re-dialing the rest of the pool now",
                now.saturating_duration_since(outage.since),
                outage.attempts
            );
        }
        if pool.granted < pool.proposed && !self.granted_said {
            self.granted_said = true;
            tracing::info!(
                %session,
                granted = pool.granted,
                proposed = pool.proposed,
                "server granted {} of {} tunnels (its connection_pool_size or limits.max_tunnels \
                 is lower); the other slots stay unused",
                pool.granted,
                pool.proposed
            );
        }
    }

    /// Slot `t` went down for `reason`. `quiet`: the session is being refused for good (that
    /// is reported once, elsewhere).
    pub(super) fn tunnel_down(
        &mut self,
        session: &str,
        t: u16,
        reason: &TunnelError,
        pool: PoolNow,
        quiet: bool,
    ) {
        let (server, now) = (pool.server, pool.now);
        let up = self.slots_of(session);
        let was_up = up.get(usize::from(t)).copied().unwrap_or(false);
        if let Some(slot) = up.get_mut(usize::from(t)) {
            *slot = false;
        }
        let normal = matches!(reason, TunnelError::Retired | TunnelError::SessionClosed);
        if quiet || normal {
            tracing::debug!(%session, tunnel = t, "tunnel closed: {reason}");
            return;
        }
        if was_up {
            tracing::warn!(
                %session,
                tunnel = t,
                tunnels_up = pool.active,
                "tunnel lost: {reason}; {} of {} tunnels still up",
                pool.active,
                pool.granted
            );
            return;
        }
        // A dial or handshake that did not give a tunnel.
        let next_in = until(pool.next_attempt, now);
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    server,
                    since: now,
                    attempts: 1,
                    attempts_since_report: 0,
                    next_report: now + OUTAGE_REPORT_INTERVAL,
                });
                tracing::warn!(
                    %server,
                    tunnels_up = pool.active,
                    next_attempt_in = ?next_in,
                    "dial failed: cannot reach server {server}: {reason}; {} of {} tunnels up; \
                     retrying with backoff (summarised every {:?})",
                    pool.active,
                    pool.granted,
                    OUTAGE_REPORT_INTERVAL
                );
            }
            Some(outage) => {
                outage.attempts += 1;
                outage.attempts_since_report += 1;
                if now >= outage.next_report {
                    tracing::warn!(
                        %server,
                        down_for = ?now.saturating_duration_since(outage.since),
                        failed_attempts = outage.attempts_since_report,
                        tunnels_up = pool.active,
                        next_attempt_in = ?next_in,
                        "server {server} still unreachable after {:.0?}: {} more failed \
                         attempts ({reason}); {} of {} tunnels up; next attempt in {:.1?}",
                        now.saturating_duration_since(outage.since),
                        outage.attempts_since_report,
                        pool.active,
                        pool.granted,
                        next_in
                    );
                    outage.attempts_since_report = 0;
                    outage.next_report = now + OUTAGE_REPORT_INTERVAL;
                } else {
                    tracing::debug!(
                        %server,
                        tunnel = t,
                        next_attempt_in = ?next_in,
                        "dial failed again: {reason}"
                    );
                }
            }
        }
    }

    /// The session moves from `m.from` to `m.to` after `reason` (the last failed attempt). Said
    /// once per server on the first pass through the list; while every server stays down, the
    /// outage summary carries on (it names the server being tried).
    pub(super) fn moved(&mut self, m: &Move, reason: &TunnelError, now: Instant) {
        let (from, to) = (m.from, m.to);
        if self.outage.is_none() {
            self.outage = Some(Outage {
                server: from,
                since: now,
                attempts: m.attempts as u64,
                attempts_since_report: 0,
                next_report: now + OUTAGE_REPORT_INTERVAL,
            });
        }
        if m.first_pass {
            tracing::warn!(
                %from,
                %to,
                failed_attempts = m.attempts,
                "server {from} unreachable ({reason}; {} failed attempts and no tunnel); \
                 trying server {to}",
                m.attempts
            );
        } else {
            tracing::debug!(%from, %to, "server {from} still unreachable ({reason}); trying {to}");
        }
    }
}
