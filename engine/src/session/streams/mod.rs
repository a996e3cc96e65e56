//! Streams: the state of each stream and its life from creation (opened here, or first named by
//! a peer's frame) to removal once both directions are complete.
//!
//! Owns: [`Stream`], stream-id admission (which ids are legal, the peer streams a frame
//! implies), readability signals and removal. The application's API lives in `send` (open,
//! write, shutdown, reset) and `recv` (read, and DATA / OPEN / RESET on receive). Must not touch:
//! framing or tunnels; credit is `flow_control`'s.

mod recv;
mod send;

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Event, Role, Session, StreamId};
use crate::error::{SessionError, StreamError, code};
use crate::reorder::ReorderBuffer;

/// One stream: both directions, their buffers, credit and completion.
#[derive(Debug)]
pub(in crate::session) struct Stream {
    pub(in crate::session) local: bool,
    pub(in crate::session) target: Option<Bytes>,
    /// Peer-opened: the OPEN arrived and the application was told.
    pub(in crate::session) announced: bool,
    // Send direction.
    pub(in crate::session) send_queue: VecDeque<Bytes>,
    pub(in crate::session) send_queued: usize,
    pub(in crate::session) send_offset: u64,
    pub(in crate::session) send_max: u64,
    pub(in crate::session) fin_requested: bool,
    pub(in crate::session) fin_sent: bool,
    pub(in crate::session) unacked_frames: u32,
    pub(in crate::session) write_blocked: bool,
    pub(in crate::session) in_ready: bool,
    // Receive direction.
    pub(in crate::session) recv: ReorderBuffer,
    pub(in crate::session) recv_highest: u64,
    /// Bytes of this stream counted as consumed for session credit.
    pub(in crate::session) recv_consumed: u64,
    pub(in crate::session) recv_max_advertised: u64,
    pub(in crate::session) final_size: Option<u64>,
    pub(in crate::session) fin_read: bool,
    pub(in crate::session) readable_signalled: bool,
    pub(in crate::session) window_update_queued: bool,
    /// Receive window auto-tuning (`flow_control`): this stream's window is
    /// `stream_window << window_doublings`, up to [`crate::Config::stream_window_ceiling`]. A
    /// shift, not a byte count: idle streams are many (issue 10), and a u8 fits the padding.
    pub(in crate::session) window_doublings: u8,
    // Reset.
    pub(in crate::session) reset_sent: bool,
    pub(in crate::session) peer_reset: Option<u32>,
    pub(in crate::session) local_reset: Option<u32>,
    /// Own stream: the peer has sent DATA or STREAM_WINDOW for it (its target is connected,
    /// §4.8), and the application was told once.
    pub(in crate::session) confirmed: bool,
    // Head-of-line relief (`relief`).
    /// Receiver: a timer is armed for this stream's hole.
    pub(in crate::session) gap_armed: bool,
    /// Receiver: where the hole being timed starts.
    pub(in crate::session) gap_at: u64,
    /// Sender: frames below this offset were already re-sent as relief.
    pub(in crate::session) relieved_to: u64,
}

impl Stream {
    pub(in crate::session) fn new(local: bool, send_max: u64, recv_window: u64) -> Self {
        Self {
            local,
            target: None,
            announced: local,
            send_queue: VecDeque::new(),
            send_queued: 0,
            send_offset: 0,
            send_max,
            fin_requested: false,
            fin_sent: false,
            unacked_frames: 0,
            write_blocked: false,
            in_ready: false,
            recv: ReorderBuffer::new(),
            recv_highest: 0,
            recv_consumed: 0,
            recv_max_advertised: recv_window,
            final_size: None,
            fin_read: false,
            readable_signalled: false,
            window_update_queued: false,
            window_doublings: 0,
            reset_sent: false,
            peer_reset: None,
            local_reset: None,
            confirmed: false,
            gap_armed: false,
            gap_at: 0,
            relieved_to: 0,
        }
    }

    pub(in crate::session) fn reset_code(&self) -> Option<u32> {
        self.peer_reset.or(self.local_reset)
    }

    pub(in crate::session) fn has_sendable(&self) -> bool {
        !self.reset_sent && (self.send_queued > 0 || (self.fin_requested && !self.fin_sent))
    }

    pub(in crate::session) fn send_done(&self) -> bool {
        self.reset_sent || (self.fin_sent && self.unacked_frames == 0 && self.send_queued == 0)
    }

    pub(in crate::session) fn recv_done(&self) -> bool {
        self.peer_reset.is_some()
            || (self.local_reset.is_some() && self.final_size.is_some())
            || (self.final_size.is_some() && self.fin_read)
    }

    pub(in crate::session) fn readable(&self) -> bool {
        self.recv.readable_len() > 0 || self.final_size == Some(self.recv.read_offset())
    }
}

impl Session {
    /// The stream the application names, if it may still be used.
    fn stream_mut(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if let Some(code) = s.reset_code() {
            return Err(StreamError::Reset(code));
        }
        Ok(s)
    }

    /// Tells the application once that `stream` has something to read.
    pub(in crate::session) fn signal_readable(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream)
            && s.announced
            && !s.readable_signalled
            && s.readable()
        {
            s.readable_signalled = true;
            self.events.push_back(Event::StreamReadable { stream });
        }
    }

    /// Drops what the application queued and never framed (the stream was reset).
    pub(in crate::session) fn abandon_send(s: &mut Stream, backlog: &mut u64) {
        *backlog -= s.send_queued as u64;
        s.send_queue.clear();
        s.send_queued = 0;
    }

    /// Forgets a stream once both directions are complete.
    pub(in crate::session) fn maybe_remove(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !(s.send_done() && s.recv_done()) {
            return;
        }
        let local = s.local;
        let (sent, received) = (s.send_offset, s.recv_highest);
        // Bytes read or discarded are consumed; anything still buffered is freed with the stream.
        let unconsumed = s.recv_highest - s.recv_consumed;
        self.streams.remove(&id);
        if local {
            self.local_open = self.local_open.saturating_sub(1);
        }
        self.recv_consumed_total += unconsumed;
        self.events.push_back(Event::StreamClosed {
            stream: id,
            sent,
            received,
        });
        if !local {
            self.on_peer_stream_closed();
        }
        self.maybe_update_session_window();
        if self.streams.is_empty() && (self.going_away_local || self.going_away_peer) {
            self.close(code::NO_ERROR, "going away: all streams finished");
        }
    }

    /// Checks a frame's stream id and creates peer streams it implies. `Ok(false)` means the
    /// stream is finished and forgotten: the frame is a late duplicate and is ignored.
    pub(in crate::session) fn admit_stream(&mut self, id: StreamId) -> Result<bool, SessionError> {
        let index = id >> 1;
        if id & 1 == self.local_parity() {
            if index >= self.next_local_index {
                return Err(SessionError::UnknownStream(id));
            }
            return Ok(self.streams.contains_key(&id));
        }
        if index >= self.peer_stream_limit {
            return Err(SessionError::StreamLimit {
                stream: id,
                limit: self.peer_stream_limit,
            });
        }
        // Frames overtake each other across tunnels, so a later stream's frame may come first.
        // Peer streams are created when a frame first names them; the indices skipped below the
        // highest seen are remembered as ranges, so an early frame for a far stream allocates
        // nothing for the ones in between, and a frame for a forgotten stream is told apart
        // from one for a stream not yet seen.
        let fresh = if index >= self.peer_streams_seen {
            if index > self.peer_streams_seen {
                self.peer_unseen.insert(self.peer_streams_seen, index);
            }
            self.peer_streams_seen = index + 1;
            true
        } else {
            self.take_unseen(index)
        };
        if fresh {
            let send_max = self.peer_params.map_or(0, |p| p.stream_window);
            self.streams.insert(
                id,
                Box::new(Stream::new(false, send_max, self.config.stream_window)),
            );
        }
        Ok(self.streams.contains_key(&id))
    }

    /// Removes `index` from the skipped ranges; true if it was there (never seen before).
    fn take_unseen(&mut self, index: u64) -> bool {
        let Some((&start, &end)) = self.peer_unseen.range(..=index).next_back() else {
            return false;
        };
        if index >= end {
            return false;
        }
        self.peer_unseen.remove(&start);
        if start < index {
            self.peer_unseen.insert(start, index);
        }
        if index + 1 < end {
            self.peer_unseen.insert(index + 1, end);
        }
        true
    }

    /// The low bit of the stream ids this end opens: even for the client, odd for the server.
    pub(in crate::session) fn local_parity(&self) -> u64 {
        match self.role {
            Role::Client => 0,
            Role::Server => 1,
        }
    }
}
