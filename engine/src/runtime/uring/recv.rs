//! Receiving: each socket's queue of received chunks, the receive that fills it, and giving
//! ring buffers back.
//!
//! Owns: arming a socket's receive ([`Core::arm_recv`]: a multishot `RECV` that picks buffers
//! from the worker's ring, or, without a ring, a one-shot receive into a buffer of the socket's
//! own), what a multishot completion means ([`Core::recv_multi_done`]: a chunk queued, end of
//! stream, an error, the ring empty, the multishot ended), taking bytes off the queue
//! ([`Core::consume`]), the end-of-turn copy out of the ring of what the loop left unread
//! ([`Core::spill`]) and arming again the sockets the ring ran dry for
//! ([`Core::rearm_starved`]). Must not touch: the ring's memory (`bufring`), submission
//! (`ring`), the [`super::super::io::IoStream`] surface (`stream`).
//!
//! Flow control is kept as with one receive at a time: a socket whose reader stops (the loop
//! leaves bytes queued at the end of its turn: its stream has no credit) has its multishot
//! cancelled and its bytes copied out of the ring, and is armed again only once the loop has read
//! it empty; the kernel's socket buffer and TCP's window then hold the rest, as before.

use std::time::{Duration, Instant};

use super::ring::{Chunk, Core, OpKind, Rx};
use super::stream::HANDSHAKE_RECV;

/// Least time between two log lines about the ring running dry.
const DRY_LOG_EVERY: Duration = Duration::from_secs(10);

impl Core {
    /// Arms the socket's receive unless one is in flight or bytes (or its end) are queued.
    pub(super) fn arm_recv(&mut self, id: usize) {
        let s = &mut self.socks[id];
        if s.closed || s.detached || s.recv_op.is_some() || !s.rx.is_empty() || s.rx_end.is_some() {
            return;
        }
        s.starved = false;
        if self.bufs.is_some() {
            self.multishots += 1;
            let op = self.start(Some(id), OpKind::RecvMulti);
            self.socks[id].recv_op = Some(op);
            return;
        }
        let size = if s.handshake {
            HANDSHAKE_RECV
        } else {
            self.read_chunk
        };
        let mut buf = std::mem::take(&mut s.spare);
        buf.clear();
        // The kernel fills the whole capacity: a handshake must not reuse a bulk-sized spare.
        if buf.capacity() < size || (s.handshake && buf.capacity() > size) {
            buf = Vec::with_capacity(size);
        }
        let op = self.start(Some(id), OpKind::Recv(buf));
        self.socks[id].recv_op = Some(op);
    }

    /// A completion of the multishot receive `key`; `more`: it stays armed.
    pub(super) fn recv_multi_done(&mut self, key: usize, res: i32, flags: u32, more: bool) {
        let Some(id) = self.ops.get(key).and_then(|op| op.sock) else {
            return;
        };
        if !more {
            self.ops.remove(key);
        }
        let len = res.max(0) as usize;
        let buf_more = io_uring::cqueue::buffer_more(flags);
        // Where this receive's bytes are: buffer, start, end.
        let got = io_uring::cqueue::buffer_select(flags).and_then(|b| {
            let r = self.bufs.as_mut()?;
            r.received(b, len, buf_more)
                .map(|(start, end)| (b, start, end))
        });
        let s = &mut self.socks[id];
        if !more {
            s.inflight -= 1;
            if s.recv_op == Some(key) {
                s.recv_op = None;
            }
            s.cancelling = false;
        }
        if s.closed {
            if let (Some((b, _, _)), Some(r), true) = (got, self.bufs.as_mut(), len > 0) {
                r.release(b);
            }
            if s.inflight == 0 {
                self.socks.remove(id);
            }
            return;
        }
        let was_empty = s.rx.is_empty() && s.rx_end.is_none();
        match got {
            Some((b, start, end)) if res > 0 => {
                s.rx.push_back(Chunk::Ring {
                    bid: b,
                    pos: start,
                    end,
                });
                if !s.holding {
                    s.holding = true;
                    self.holding.push(id);
                }
            }
            _ => {
                if res == 0 {
                    s.rx_end = Some(Rx::Eof);
                } else if res == -libc::ENOBUFS {
                    // The ring is empty: this socket waits for buffers to come back.
                    if let Some(r) = self.bufs.as_mut() {
                        r.dry += 1;
                    }
                    if !s.starved {
                        s.starved = true;
                        self.starved.push_back(id);
                    }
                } else if res < 0 && !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN) {
                    s.rx_end = Some(Rx::Err(std::io::Error::from_raw_os_error(-res)));
                }
            }
        }
        let queued = !(s.rx.is_empty() && s.rx_end.is_none());
        if !more && !queued {
            // Ended with nothing queued (cancelled after the reader caught up, or interrupted):
            // the reader waits for an event, so receive again now. The ring running dry is
            // handled by `rearm_starved`.
            if !self.socks[id].starved {
                self.arm_recv(id);
            }
            return;
        }
        if was_empty
            && queued
            && let Some(t) = self.socks[id].token
        {
            self.ready.push((t, true, false));
        }
    }

    /// Takes up to `max` queued bytes off socket `id`'s queue, in order, passing them to `out`,
    /// and gives back every ring buffer emptied; arms the next receive when the queue runs
    /// empty. Returns the count taken.
    pub(super) fn consume(&mut self, id: usize, max: usize, mut out: impl FnMut(&[u8])) -> usize {
        let read_chunk = self.read_chunk;
        let Core { socks, bufs, .. } = self;
        let s = &mut socks[id];
        let mut taken = 0;
        while taken < max {
            let Some(chunk) = s.rx.front_mut() else {
                break;
            };
            let (data, pos, end): (&[u8], &mut usize, usize) = match chunk {
                Chunk::Ring { bid, pos, end } => match bufs.as_ref() {
                    Some(r) => (r.data(*bid, *end), pos, *end),
                    None => {
                        let at = *pos;
                        (&[], pos, at)
                    }
                },
                Chunk::Heap { data, pos, end } => (&data[..], pos, *end),
            };
            let n = (end - *pos).min(max - taken);
            out(&data[*pos..*pos + n]);
            *pos += n;
            taken += n;
            if *pos < end {
                break;
            }
            match s.rx.pop_front() {
                Some(Chunk::Ring { bid, .. }) => {
                    if let Some(r) = bufs.as_mut() {
                        r.release(bid);
                    }
                }
                // A receive buffer of the socket's own is kept for its next receive.
                Some(Chunk::Heap { data, .. }) if data.capacity() >= read_chunk => {
                    s.spare = data;
                }
                Some(Chunk::Heap { .. }) | None => {}
            }
        }
        if s.rx.is_empty() {
            self.arm_recv(id);
        }
        taken
    }

    /// The next queued chunk whole, when it is a well-filled buffer that can change hands
    /// without a copy (a fresh buffer takes its place in the ring).
    pub(super) fn take_whole(&mut self, id: usize) -> Option<Vec<u8>> {
        let s = &mut self.socks[id];
        let whole = match s.rx.front() {
            Some(Chunk::Ring { bid, pos: 0, end }) => {
                // Only a buffer no other chunk shares changes hands.
                self.bufs
                    .as_ref()
                    .is_some_and(|r| *end >= r.size() / 4 && r.sole(*bid))
            }
            Some(Chunk::Heap { pos: 0, end, .. }) => *end >= self.read_chunk / 4,
            _ => false,
        };
        if !whole {
            return None;
        }
        let out = match s.rx.pop_front()? {
            Chunk::Ring { bid, end, .. } => self.bufs.as_mut()?.hand_over(bid, end),
            Chunk::Heap { mut data, end, .. } => {
                data.truncate(end);
                data
            }
        };
        if self.socks[id].rx.is_empty() {
            self.arm_recv(id);
        }
        Some(out)
    }

    /// Gives back the ring buffers socket `id` still holds (it is closing or changing hands).
    pub(super) fn release_rx(&mut self, id: usize) {
        let s = &mut self.socks[id];
        for chunk in s.rx.drain(..) {
            if let (Chunk::Ring { bid, .. }, Some(r)) = (chunk, self.bufs.as_mut()) {
                r.release(bid);
            }
        }
    }

    /// End of the loop's turn: every socket given ring buffers since the last wait has had its
    /// event handled; what it left unread is copied out of the ring (its stream is short of
    /// credit) and its multishot is cancelled, so a slow reader holds neither ring buffers nor
    /// a receive that would keep filling them. O(sockets given buffers), at most the ring's
    /// size.
    pub(super) fn spill(&mut self) {
        let mut ids = std::mem::take(&mut self.holding);
        let mut cancel = Vec::new();
        for &id in &ids {
            let Core { socks, bufs, .. } = &mut *self;
            let (Some(s), Some(r)) = (socks.get_mut(id), bufs.as_mut()) else {
                continue;
            };
            if !s.holding {
                continue;
            }
            s.holding = false;
            let mut left = false;
            for chunk in s.rx.iter_mut() {
                if let Chunk::Ring { bid, pos, end } = *chunk {
                    let data = r.data(bid, end)[pos..].to_vec();
                    r.release(bid);
                    *chunk = Chunk::Heap {
                        end: data.len(),
                        data,
                        pos: 0,
                    };
                    left = true;
                }
            }
            if left
                && !s.cancelling
                && let Some(op) = s.recv_op
            {
                s.cancelling = true;
                cancel.push(op);
            }
        }
        self.cancel(cancel);
        ids.clear();
        if self.holding.is_empty() {
            // Keep the allocation.
            self.holding = ids;
        }
    }

    /// Arms again the sockets whose receive ended on an empty ring, as many as there are
    /// buffers back; says whether some still wait. Logs the ring running dry at most every
    /// [`DRY_LOG_EVERY`].
    pub(super) fn rearm_starved(&mut self, now: Instant) -> bool {
        let Some(r) = self.bufs.as_ref() else {
            return false;
        };
        let mut budget = r.free();
        let (size, dry, count) = (r.size(), r.dry, r.count());
        if dry > self.dry_log.1 && now >= self.dry_log.0 {
            tracing::info!(
                "io_uring: the receive buffer ring ({count} buffers of {size} B) ran dry \
                 {} times since the last report; the sockets it missed were armed again",
                dry - self.dry_log.1
            );
            self.dry_log = (now + DRY_LOG_EVERY, dry);
        }
        while budget > 0 {
            let Some(id) = self.starved.pop_front() else {
                break;
            };
            let Some(s) = self.socks.get_mut(id) else {
                continue;
            };
            if !s.starved {
                continue;
            }
            s.starved = false;
            if s.recv_op.is_none() && !s.closed {
                self.arm_recv(id);
                budget -= 1;
            }
        }
        !self.starved.is_empty()
    }
}
