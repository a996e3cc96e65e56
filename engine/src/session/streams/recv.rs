//! The receiving half of the stream API: reading, and what the peer's OPEN, DATA and RESET do
//! to a stream.
//!
//! Owns: in-order delivery to the application (through the stream's reorder buffer), final-size
//! and credit checks on received data, and the peer's reset. Must not touch: acknowledgement
//! (`retransmit`) or how credit is returned (`flow_control`).

use bytes::Bytes;

use crate::error::{SessionError, StreamError};
use crate::session::retransmit::Reliable;
use crate::session::{Event, ReadOutcome, Session, StreamId};

impl Session {
    /// Reads up to `max` bytes in order, returning credit to the peer as the reader consumes.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<ReadOutcome, StreamError> {
        let s = self.stream_mut(id)?;
        if let Some(data) = s.recv.read(max.max(1)) {
            if s.recv.readable_len() == 0 {
                s.readable_signalled = false;
            }
            self.on_consumed(id, data.len() as u64);
            return Ok(ReadOutcome::Data(data));
        }
        if s.final_size == Some(s.recv.read_offset()) {
            s.fin_read = true;
            self.maybe_remove(id);
            return Ok(ReadOutcome::Fin);
        }
        s.readable_signalled = false;
        Ok(ReadOutcome::WouldBlock)
    }

    /// A peer's OPEN: announces the stream to the application.
    pub(in crate::session) fn on_open(
        &mut self,
        stream: StreamId,
        target: Option<Bytes>,
    ) -> Result<(), SessionError> {
        if stream & 1 == self.local_parity() {
            return Err(SessionError::Protocol(format!(
                "OPEN for stream {stream}, which belongs to this end"
            )));
        }
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.announced || s.reset_code().is_some() {
            return Ok(());
        }
        s.announced = true;
        s.target = target.clone();
        let target = target.map(|b| String::from_utf8_lossy(&b).into_owned());
        self.events
            .push_back(Event::StreamOpened { stream, target });
        self.signal_readable(stream);
        Ok(())
    }

    /// A peer's DATA: checked against credit and the final size, then buffered in order.
    pub(in crate::session) fn on_data(
        &mut self,
        stream: StreamId,
        offset: u64,
        fin: bool,
        payload: Bytes,
    ) -> Result<(), SessionError> {
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        let end = offset + payload.len() as u64;
        if s.peer_reset.is_some() {
            return Ok(());
        }
        if s.local && !s.confirmed {
            s.confirmed = true;
            self.events.push_back(Event::StreamConfirmed { stream });
        }
        if end > s.recv_max_advertised {
            return Err(SessionError::FlowControl {
                stream,
                offset: end,
                limit: s.recv_max_advertised,
            });
        }
        if let Some(size) = s.final_size
            && (end > size || (fin && end != size))
        {
            return Err(SessionError::Protocol(format!(
                "stream {stream}: data to {end} conflicts with its final size {size}"
            )));
        }
        if fin {
            if s.recv_highest > end {
                return Err(SessionError::Protocol(format!(
                    "stream {stream}: FIN at {end} below data already received"
                )));
            }
            s.final_size = Some(end);
        }
        if end > s.recv_highest {
            self.recv_data_total += end - s.recv_highest;
            s.recv_highest = end;
            if self.recv_data_total > self.recv_max_data {
                return Err(SessionError::SessionFlowControl {
                    received: self.recv_data_total,
                    limit: self.recv_max_data,
                });
            }
        }
        if s.local_reset.is_some() {
            // Reset here, not yet confirmed by the peer: count the bytes as consumed at once.
            let newly = s.recv_highest - s.recv_consumed;
            s.recv_consumed = s.recv_highest;
            self.recv_consumed_total += newly;
            self.maybe_update_session_window();
            self.maybe_remove(stream);
            return Ok(());
        }
        // Each out-of-order piece costs a map entry and an allocation beyond its bytes: that
        // overhead is charged against the session window too (docs/PROTOCOL.md §5.4).
        let overhead_before = s.recv.pending_overhead();
        s.recv.insert(offset, payload);
        let (overhead_after, ranges) = (s.recv.pending_overhead(), s.recv.pending_ranges());
        self.reorder_overhead = self.reorder_overhead - overhead_before + overhead_after;
        if ranges as u64 > self.config.max_pending_ranges {
            return Err(SessionError::PendingRanges {
                stream,
                limit: self.config.max_pending_ranges,
            });
        }
        if self.reorder_overhead > self.config.session_window {
            return Err(SessionError::ReorderCharge {
                charged: self.reorder_overhead,
                limit: self.config.session_window,
            });
        }
        self.maybe_grow_stream_window(stream);
        self.signal_readable(stream);
        Ok(())
    }

    /// A peer's RESET: both directions end; our own RESET answers it.
    pub(in crate::session) fn on_reset(
        &mut self,
        stream: StreamId,
        final_offset: u64,
        code: u32,
    ) -> Result<(), SessionError> {
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.peer_reset.is_some() {
            return Ok(());
        }
        if final_offset < s.recv_highest || s.final_size.is_some_and(|f| f != final_offset) {
            return Err(SessionError::Protocol(format!(
                "stream {stream}: RESET final offset {final_offset} contradicts data received"
            )));
        }
        if final_offset > s.recv_max_advertised {
            return Err(SessionError::FlowControl {
                stream,
                offset: final_offset,
                limit: s.recv_max_advertised,
            });
        }
        self.recv_data_total += final_offset - s.recv_highest;
        if self.recv_data_total > self.recv_max_data {
            return Err(SessionError::SessionFlowControl {
                received: self.recv_data_total,
                limit: self.recv_max_data,
            });
        }
        s.recv_highest = final_offset;
        s.final_size = Some(final_offset);
        self.recv_consumed_total += final_offset - s.recv_consumed;
        s.recv_consumed = final_offset;
        self.reorder_overhead -= s.recv.pending_overhead();
        s.recv.discard();
        s.peer_reset = Some(code);
        let announce = s.announced && s.local_reset.is_none();
        Self::abandon_send(s, &mut self.backlog);
        if !s.reset_sent {
            s.reset_sent = true;
            let final_sent = s.send_offset;
            self.control.push_back(Reliable::Reset {
                stream,
                final_offset: final_sent,
                code,
            });
        }
        if announce {
            self.events.push_back(Event::StreamReset { stream, code });
        }
        self.maybe_update_session_window();
        self.maybe_remove(stream);
        Ok(())
    }
}
