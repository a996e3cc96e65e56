//! Refused targets, said once and then counted: a server's streams reset because their target
//! is not in its allow-list (code 5) or cannot be resolved (code 1), and a client's streams the
//! server reset with code 5, per forward. The first of each is a warning; the repeats are
//! summarised once per [`REPORT_INTERVAL`] (see [`crate::runtime::repeat_log`]). Also a
//! client's application connections reset because a stream limit is reached (this end's
//! `max_streams`, or the server's), per forward and limit.
//!
//! Owns: the per-worker table of refused targets and its summaries. Must not touch: routing
//! (the resolver decides, [`super::backends`] acts) or the streams themselves.

use std::time::{Duration, Instant};

use super::{Entry, EventLoop, RESET_NOT_ALLOWED, Role};
use crate::runtime::ClientForward;
use crate::runtime::io::Driver;
use crate::runtime::repeat_log::RepeatLog;
use crate::session::StreamId;

/// How often the repeats of one refusal are summarised.
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The refusals of one worker.
#[derive(Debug)]
pub(super) struct TargetRefusals {
    log: RepeatLog,
}

impl Default for TargetRefusals {
    fn default() -> Self {
        Self {
            log: RepeatLog::new(REPORT_INTERVAL),
        }
    }
}

impl<D: Driver> EventLoop<D> {
    /// Server: stream `stream`'s target `target` was refused, `allowed` false when it is not in
    /// the allow-list (else it could not be resolved).
    pub(super) fn note_target_refused(
        &mut self,
        stream: StreamId,
        target: Option<&str>,
        allowed: bool,
    ) {
        let target = target.unwrap_or("<default backend>");
        let why = if allowed {
            "cannot be resolved"
        } else {
            "is not a [[server.forward]] target"
        };
        let key = format!("{target} {why}");
        if self.target_refusals.log.note(&key, Instant::now()) {
            tracing::warn!(
                stream,
                target,
                "target {target} {why}: stream reset (repeats summarised every {:?})",
                self.target_refusals.log.interval()
            );
        } else {
            tracing::debug!(stream, target, "target {target} {why}: stream reset");
        }
    }

    /// Client: the server reset `stream` (carried by entry `k`) with `code`. A refused target
    /// (code 5) is said once per forward, then summarised; other resets are one line each.
    pub(super) fn log_reset_by_peer(&mut self, id: &str, stream: StreamId, code: u32, k: usize) {
        let forward = match (self.entries.get(k), &self.role) {
            (Some(Entry::App(app)), Role::Client { .. }) => app.forward().cloned(),
            _ => None,
        };
        let Some(forward) = forward.filter(|_| code == RESET_NOT_ALLOWED) else {
            tracing::info!(session = %id, stream, code, "stream reset by peer");
            return;
        };
        let name = forward.name.as_deref().unwrap_or_default();
        let target = forward.target.as_deref().unwrap_or("<server default>");
        let key = format!("{} -> {target}", forward.listen);
        if self.target_refusals.log.note(&key, Instant::now()) {
            tracing::warn!(
                session = %id,
                stream,
                forward = name,
                listen = %forward.listen,
                target,
                "the server refused target {target} of forward {} (not allowed there, reset \
                 code 5); its connections are reset (repeats summarised every {:?})",
                if name.is_empty() { forward.listen.to_string() } else { name.to_owned() },
                self.target_refusals.log.interval()
            );
        } else {
            tracing::debug!(session = %id, stream, forward = name, target, "target refused again");
        }
    }

    /// Client: an application connection of `forward` was reset because opening its stream
    /// hit a limit (`why`, a [`crate::StreamError`]).
    pub(super) fn note_stream_limit(&mut self, forward: &ClientForward, why: &crate::StreamError) {
        let name = forward.name.as_deref().unwrap_or_default();
        let key = format!("application connection to {} reset: {why}", forward.listen);
        if self.target_refusals.log.note(&key, Instant::now()) {
            tracing::warn!(
                forward = name,
                listen = %forward.listen,
                "{key} (repeats summarised every {:?})",
                self.target_refusals.log.interval()
            );
        } else {
            tracing::debug!(forward = name, "{key}");
        }
    }

    /// Summaries of the refusals that repeated, when due.
    pub(super) fn report_target_refusals(&mut self, now: Instant) {
        for (key, count) in self.target_refusals.log.due(now) {
            tracing::warn!(
                refusals = count,
                "refused again {count} times in the last {:?}: {key}",
                REPORT_INTERVAL
            );
        }
    }
}
