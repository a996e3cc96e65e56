//! Client: application connections waiting for a tunnel. While no tunnel can carry a new
//! stream (the pool still opening, the server unreachable; a stream limit resets at once), an
//! accepted connection is held here, unread, for at most `connect_wait` and in bounded number;
//! then it is reset, and the log says so, aggregated. When a tunnel comes up, a held connection
//! the application has closed meanwhile (it sent nothing and closed, or reset it) is dropped,
//! never sent; the others become streams.
//!
//! Owns: [`WaitingApp`], the hold / release / expiry of waiting connections and their
//! aggregated log. Must not touch: opening streams ([`super::app`]) or tunnels.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{EventLoop, Role};
use crate::endpoint::SessionKey;
use crate::runtime::io::Driver;
use crate::runtime::{ClientForward, MAX_WAITING_CONNECTIONS, sockopt};

/// How often the resets and drops of waiting connections are summarised.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// An accepted application connection not yet carried by a stream.
#[derive(Debug)]
pub(super) struct WaitingApp<D: Driver> {
    pub(super) conn: D::Stream,
    pub(super) forward: Arc<ClientForward>,
    /// When it was accepted (its `connect_wait` runs from here).
    pub(super) since: Instant,
}

/// Waiting connections reset or dropped since the last report.
#[derive(Debug, Default)]
pub(super) struct ConnectWaitLog {
    timed_out: u64,
    over_limit: u64,
    closed_by_app: u64,
    next_report: Option<Instant>,
}

impl ConnectWaitLog {
    fn is_empty(&self) -> bool {
        self.timed_out == 0 && self.over_limit == 0 && self.closed_by_app == 0
    }
}

/// The application closed `conn` while it waited: it reached end of file having sent nothing,
/// or it was reset. A connection with bytes waiting is kept (it may be half-closed, still
/// reading its answer).
fn closed_by_app(conn: &impl std::os::fd::AsFd) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(conn).recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl<D: Driver> EventLoop<D> {
    /// Most connections one session holds.
    fn waiting_limit(&self) -> usize {
        (self.opts.engine.max_streams as usize).clamp(1, MAX_WAITING_CONNECTIONS)
    }

    /// Holds `app` until a tunnel can carry it, or resets it at once when too many wait.
    pub(super) fn hold_app(&mut self, skey: SessionKey, app: WaitingApp<D>) {
        let limit = self.waiting_limit();
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let waiting = &mut slot.data_mut().waiting_apps;
        if waiting.len() >= limit {
            sockopt::abort_on_close(&app.conn);
            self.connect_wait_log.over_limit += 1;
            return;
        }
        tracing::debug!(
            forward = app.forward.name.as_deref().unwrap_or_default(),
            "application connection waits for a tunnel"
        );
        waiting.push_back(app);
    }

    /// A tunnel is up: the held connections become streams, except those the application
    /// closed meanwhile, which are dropped unsent.
    pub(super) fn release_waiting(&mut self, skey: SessionKey) {
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let waiting: VecDeque<WaitingApp<D>> = std::mem::take(&mut slot.data_mut().waiting_apps);
        for app in waiting {
            if closed_by_app(&app.conn) {
                self.connect_wait_log.closed_by_app += 1;
                tracing::debug!("application closed its connection while it waited; not sent");
                continue;
            }
            self.start_client_stream(skey, app);
        }
    }

    /// Client: resets the connections that waited `connect_wait` for a tunnel, and says so
    /// (aggregated).
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        if !matches!(self.role, Role::Client { .. }) {
            return;
        }
        let wait = self.opts.connect_wait;
        for skey in self.endpoint.keys() {
            let waiting = &mut self.endpoint[skey].data_mut().waiting_apps;
            while waiting.front().is_some_and(|a| now >= a.since + wait) {
                if let Some(app) = waiting.pop_front() {
                    sockopt::abort_on_close(&app.conn);
                    self.connect_wait_log.timed_out += 1;
                }
            }
        }
        self.report_connect_wait(now);
    }

    /// The earliest `connect_wait` deadline of a held connection.
    pub(super) fn next_waiting_deadline(&self) -> Option<Instant> {
        // A server has many sessions and never holds connections: not worth a scan per turn.
        if !matches!(self.role, Role::Client { .. }) {
            return None;
        }
        let wait = self.opts.connect_wait;
        self.endpoint
            .iter()
            .filter_map(|(_, s)| s.data().waiting_apps.front().map(|a| a.since + wait))
            .min()
    }

    /// One line for the resets and drops since the last, at most every [`REPORT_INTERVAL`].
    fn report_connect_wait(&mut self, now: Instant) {
        let Some(server) = self.current_server() else {
            return;
        };
        let log = &mut self.connect_wait_log;
        if log.is_empty() || log.next_report.is_some_and(|at| now < at) {
            return;
        }
        let (up, granted) = self.endpoint.client_session().map_or((0, 0), |k| {
            let s = self.endpoint[k].session();
            (s.active_tunnels(), s.granted_tunnels())
        });
        let log = &mut self.connect_wait_log;
        if log.timed_out + log.over_limit > 0 {
            tracing::warn!(
                %server,
                reset_after_wait = log.timed_out,
                reset_over_limit = log.over_limit,
                closed_by_app = log.closed_by_app,
                tunnels_up = up,
                "application connections reset: {} waited connect_wait ({:?}) and {} found too \
                 many waiting already, for want of a tunnel to server {server} ({up} of \
                 {granted} tunnels up); {} more were closed by the application while waiting \
                 and not sent",
                log.timed_out,
                self.opts.connect_wait,
                log.over_limit,
                log.closed_by_app
            );
        } else {
            tracing::info!(
                %server,
                closed_by_app = log.closed_by_app,
                "{} application connections were closed by the application while they waited \
                 for a tunnel; not sent",
                log.closed_by_app
            );
        }
        *log = ConnectWaitLog {
            next_report: Some(now + REPORT_INTERVAL),
            ..ConnectWaitLog::default()
        };
    }
}
