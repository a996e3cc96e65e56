//! The sending half of the stream API: opening a stream, writing, half-closing, and resetting
//! (which aborts both directions).
//!
//! Owns: the application's commands that put bytes or a stream's end into the send queue.
//! Must not touch: framing or scheduling (`transmit` takes from the ready queue built here), or
//! credit (`flow_control`).

use bytes::Bytes;

use super::Stream;
use crate::error::StreamError;
use crate::session::retransmit::Reliable;
use crate::session::{Session, StreamId};
use crate::wire::MAX_TARGET_LEN;

impl Session {
    /// Opens a stream; `target` (`host:port`) tells the far end where to connect. Data written
    /// at once travels with the OPEN: no round trip is waited for.
    pub fn open_stream(&mut self, target: Option<&str>) -> Result<StreamId, StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        if self.going_away_local || self.going_away_peer {
            return Err(StreamError::GoingAway);
        }
        let Some(peer) = self.peer_params else {
            if self.pool_deferred {
                // Zero-RTT is off: the first stream is what dials the pool.
                self.dial_pool_soon();
            }
            return Err(StreamError::NotReady);
        };
        if self.local_open >= self.config.max_streams {
            // This end's own cap on concurrent streams: refused, never queued.
            return Err(StreamError::LocalStreamLimit(self.config.max_streams));
        }
        if self.next_local_index >= self.local_stream_limit {
            return Err(StreamError::StreamLimit);
        }
        if target.is_some_and(|t| t.len() > MAX_TARGET_LEN) {
            return Err(StreamError::TargetTooLong(MAX_TARGET_LEN));
        }
        let id = (self.next_local_index << 1) | self.local_parity();
        self.next_local_index += 1;
        self.local_open += 1;
        let mut s = Box::new(Stream::new(
            true,
            peer.stream_window,
            self.config.stream_window,
        ));
        s.target = target.map(|t| Bytes::copy_from_slice(t.as_bytes()));
        s.unacked_frames = 1;
        self.streams.insert(id, s);
        self.control.push_back(Reliable::Open { stream: id });
        Ok(id)
    }

    /// Queues bytes on a stream; returns how many were taken (fewer when the send buffer is
    /// full: [`Event::StreamWritable`](crate::session::Event::StreamWritable) says when to try again). Zero-copy for
    /// a write of [`crate::chunks::COALESCE_BELOW`] bytes or more; a smaller one is copied onto the
    /// stream's last queued chunk.
    pub fn write(&mut self, id: StreamId, data: Bytes) -> Result<usize, StreamError> {
        let mut data = data;
        self.write_from(id, &mut data)
    }

    /// Like [`Session::write`], taking the bytes it queues off the front of `data` (what the
    /// send buffer had no room for stays there). A write taken whole moves the caller's buffer
    /// into the stream, so a small chunk nothing else holds is queued without a copy.
    pub fn write_from(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, StreamError> {
        let limit = self.config.stream_send_buffer;
        let s = self.stream_mut(id)?;
        if s.fin_requested {
            return Err(StreamError::Finished);
        }
        let room = limit.saturating_sub(s.send_queued);
        let n = room.min(data.len());
        if n < data.len() {
            s.write_blocked = true;
        }
        if n == 0 {
            return Ok(0);
        }
        s.send_queued += n;
        // Small writes share chunks, so a full send buffer costs about its bytes.
        let taken = if n == data.len() {
            std::mem::take(data)
        } else {
            data.split_to(n)
        };
        crate::chunks::append_small(&mut s.send_queue, taken);
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(id);
        }
        self.backlog += n as u64;
        Ok(n)
    }

    /// Like [`Session::write`], copying from a slice (only the part taken is copied).
    pub fn write_slice(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let limit = self.config.stream_send_buffer;
        let room = {
            let s = self.stream_mut(id)?;
            limit.saturating_sub(s.send_queued)
        };
        let n = room.min(data.len());
        let taken = self.write(id, Bytes::copy_from_slice(&data[..n]))?;
        if n < data.len()
            && let Some(s) = self.streams.get_mut(&id)
        {
            s.write_blocked = true;
        }
        Ok(taken)
    }

    /// Ends this end's direction of the stream (half-close): the peer reads EOF after the bytes
    /// already written; its direction stays open.
    pub fn shutdown(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.stream_mut(id)?;
        if s.fin_requested {
            return Ok(());
        }
        s.fin_requested = true;
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(id);
        }
        Ok(())
    }

    /// Aborts both directions of the stream; the peer sees [`Event::StreamReset`](crate::session::Event::StreamReset) with `code`.
    pub fn reset(&mut self, id: StreamId, code: u32) -> Result<(), StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(StreamError::UnknownStream(id));
        };
        if s.reset_code().is_some() {
            return Ok(());
        }
        s.local_reset = Some(code);
        Self::abandon_send(s, &mut self.backlog);
        self.reorder_overhead -= s.recv.pending_overhead();
        s.recv.discard();
        let consumed = s.recv_highest - s.recv_consumed;
        s.recv_consumed = s.recv_highest;
        self.recv_consumed_total += consumed;
        if !s.reset_sent {
            s.reset_sent = true;
            let final_offset = s.send_offset;
            self.control.push_back(Reliable::Reset {
                stream: id,
                final_offset,
                code,
            });
        }
        self.maybe_update_session_window();
        self.maybe_remove(id);
        Ok(())
    }
}
