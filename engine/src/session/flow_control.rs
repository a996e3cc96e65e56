//! Flow control, both ways: the credit this end grants the peer (per stream, per session, and in
//! streams) and returns as the application consumes, and the credit the peer grants this end.
//!
//! Owns: when a window update is due and the "already queued" flags that keep one update of
//! each kind in the control queue; receive-window auto-tuning; applying the peer's
//! STREAM_WINDOW, SESSION_WINDOW and MAX_STREAMS. Must not touch: the checks of received data
//! against credit (`streams::recv`, where the data is) or how much credit a transmit may use
//! (`transmit`, where frames are cut).
//!
//! Auto-tuning (docs/PROTOCOL.md §5.1), like TCP's receive-buffer autotuning: a stream's window
//! starts at `stream_window` and doubles, up to [`Config::stream_window_ceiling`], whenever the
//! peer has used up the credit it was given ([`GROW_SLACK`]) while a hole holds most of it
//! (at least half the window beyond the hole) and the reader has read everything before it.
//! That happens when a tunnel in a long recovery (an RTO, a lost retransmission) holds the
//! stream's next offset while the other tunnels keep delivering: the window, not the path,
//! then stops the sender. A clean path, or a reader that
//! is merely slow (no hole), never grows it. What the peer can make this end hold stays bounded
//! by the ceiling per stream and by `session_window` per session, whatever it sends.

use super::retransmit::Reliable;
use super::{Session, StreamId};
use crate::config::{Config, range};
use crate::error::SessionError;

/// A stream's window grows once the peer's data reaches within 1/this of the window of the
/// credit advertised: the sender has (nearly) run out of it. Not the window itself: credit is
/// extended only after half a window is read, so a sender may be out of credit with anything
/// between half a window and a whole one buffered here.
pub const GROW_SLACK: u64 = 16;

/// What flow control counted, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Times one of this end's streams had data to send and no stream credit left (it then
    /// waits for the peer's STREAM_WINDOW).
    pub stream_credit_waits: u64,
    /// Times this end doubled a stream's receive window (auto-tuning).
    pub stream_window_growths: u64,
    /// Largest receive window any stream of this session reached, bytes (0 before any grew).
    pub stream_window_peak: u64,
}

impl Session {
    /// The receive window of a stream that has doubled `doublings` times.
    fn stream_recv_window(config: &Config, doublings: u8) -> u64 {
        config
            .stream_window
            .checked_shl(u32::from(doublings))
            .unwrap_or(u64::MAX)
            .min(config.stream_window_ceiling())
    }

    /// Receive-window auto-tuning (module docs): after DATA for `id` was buffered, doubles the
    /// stream's window and advertises it at once when what it holds beyond its first hole has
    /// nearly filled the window.
    pub(super) fn maybe_grow_stream_window(&mut self, id: StreamId) {
        let config = &self.config;
        let ceiling = config.stream_window_ceiling();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let window = Self::stream_recv_window(config, s.window_doublings);
        if window >= ceiling || s.final_size.is_some() || s.recv.pending_ranges() == 0 {
            return;
        }
        let beyond_hole = s.recv_highest.saturating_sub(s.recv.contiguous_end());
        // The reader must be waiting on the hole (little readable before it): a reader that
        // does not read holds the credit itself, and more window would only buy more memory.
        let reader_waits = s.recv.readable_len() as u64 <= window / GROW_SLACK;
        if s.recv_highest + window / GROW_SLACK < s.recv_max_advertised
            || beyond_hole < window / 2
            || !reader_waits
        {
            return;
        }
        s.window_doublings += 1;
        let grown = Self::stream_recv_window(config, s.window_doublings);
        // The reader is stuck at the hole: credit must go out now, not when it next reads.
        s.recv_max_advertised = s.recv_max_advertised.max(s.recv.read_offset() + grown);
        self.window_stats.stream_window_growths += 1;
        self.window_stats.stream_window_peak = self.window_stats.stream_window_peak.max(grown);
        if !s.window_update_queued {
            s.window_update_queued = true;
            self.control
                .push_back(Reliable::StreamWindow { stream: id });
        }
    }

    /// The application consumed `n` bytes of `id`: once half a window is used, the stream's
    /// and the session's credit are extended by a window beyond what was read.
    pub(super) fn on_consumed(&mut self, id: StreamId, n: u64) {
        if let Some(s) = self.streams.get_mut(&id) {
            let window = Self::stream_recv_window(&self.config, s.window_doublings);
            s.recv_consumed += n;
            if s.final_size.is_none() && s.recv_max_advertised - s.recv.read_offset() <= window / 2
            {
                s.recv_max_advertised = s.recv.read_offset() + window;
                if !s.window_update_queued {
                    s.window_update_queued = true;
                    self.control
                        .push_back(Reliable::StreamWindow { stream: id });
                }
            }
        }
        self.recv_consumed_total += n;
        self.maybe_update_session_window();
    }

    /// Extends the session's credit once half of it has been consumed.
    pub(super) fn maybe_update_session_window(&mut self) {
        let window = self.config.session_window;
        if self.recv_max_data - self.recv_consumed_total.min(self.recv_max_data) <= window / 2 {
            self.recv_max_data = self.recv_consumed_total + window;
            if !self.session_window_queued {
                self.session_window_queued = true;
                self.control.push_back(Reliable::SessionWindow);
            }
        }
    }

    /// A peer stream is finished: the peer may open more, granted in steps of an eighth of
    /// `max_streams` (none while going away).
    pub(super) fn on_peer_stream_closed(&mut self) {
        self.peer_streams_closed += 1;
        let target = self.peer_streams_closed + self.config.max_streams;
        let step = (self.config.max_streams / 8).max(1);
        if target >= self.peer_stream_limit + step && !self.going_away_local {
            self.peer_stream_limit = target;
            if !self.max_streams_queued {
                self.max_streams_queued = true;
                self.control.push_back(Reliable::MaxStreams);
            }
        }
    }

    /// A window update leaves the control queue (sent or obsolete): the next one may be queued.
    pub(super) fn clear_queued_flag(&mut self, r: &Reliable) {
        match r {
            Reliable::StreamWindow { stream } => {
                if let Some(s) = self.streams.get_mut(stream) {
                    s.window_update_queued = false;
                }
            }
            Reliable::SessionWindow => self.session_window_queued = false,
            Reliable::MaxStreams => self.max_streams_queued = false,
            _ => {}
        }
    }

    /// The peer's STREAM_WINDOW: more credit for one of our streams, which may send again. The
    /// credit is clamped to the largest window this end could announce beyond what it sent.
    pub(super) fn on_stream_window(
        &mut self,
        stream: StreamId,
        max_offset: u64,
    ) -> Result<(), SessionError> {
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.local && !s.confirmed && s.reset_code().is_none() {
                s.confirmed = true;
                self.events
                    .push_back(super::Event::StreamConfirmed { stream });
            }
            let max_offset =
                max_offset.min(s.send_offset.saturating_add(*range::STREAM_WINDOW.end()));
            if max_offset <= s.send_max {
                return Ok(());
            }
            s.send_max = max_offset;
            if s.has_sendable() && !s.in_ready {
                s.in_ready = true;
                self.ready.push_back(stream);
            }
        }
        Ok(())
    }

    /// Confirms a stream the peer opened (its target is connected, PROTOCOL.md §4.8): a
    /// STREAM_WINDOW repeating the current limit, which changes no credit. A no-op when an
    /// update is already queued (it confirms as well) or for this end's own streams.
    pub fn confirm_stream(&mut self, id: StreamId) {
        if id & 1 == self.local_parity() {
            return;
        }
        if let Some(s) = self.streams.get_mut(&id)
            && !s.window_update_queued
            && s.reset_code().is_none()
        {
            s.window_update_queued = true;
            self.control
                .push_back(Reliable::StreamWindow { stream: id });
        }
    }

    /// The peer's SESSION_WINDOW: credits only grow (updates may overtake each other), and
    /// never beyond the largest session window this end could announce past what it sent.
    pub(super) fn on_session_window(&mut self, max_data: u64) {
        let ceiling = self
            .send_data_total
            .saturating_add(*range::SESSION_WINDOW.end());
        self.peer_max_data = self.peer_max_data.max(max_data.min(ceiling));
    }

    /// The peer's MAX_STREAMS: the cumulative count of streams this end may open, never more
    /// than the largest `max_streams` this end could announce beyond those it opened.
    pub(super) fn on_max_streams(&mut self, count: u64) {
        let ceiling = self
            .next_local_index
            .saturating_add(*range::MAX_STREAMS.end());
        self.local_stream_limit = self.local_stream_limit.max(count.min(ceiling));
    }
}
