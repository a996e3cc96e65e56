//! Workers: the threads of one runtime, and what crosses between them.
//!
//! Owns: the lock-free single-producer single-consumer rings between every ordered pair of
//! workers (one [`Mailbox`] per worker holds its ends), the messages sent through them
//! ([`Handoff`]), the rule that names a session's home worker ([`home_worker`]), and pinning a
//! worker to a core. Must not touch: sockets or sessions themselves (the event loop owns those;
//! this module only carries them from one loop to another).
//!
//! A session and everything it owns (tunnels, streams, application sockets) lives on one worker
//! for its whole life, so the data path never takes a lock. The only thing that crosses cores is
//! a tunnel connection the kernel's `SO_REUSEPORT` balancing gave to another worker than its
//! session's home: that worker reads the first 24 bytes of its ClientHello, learns the session
//! id, and hands the socket (with the bytes already read) to the home worker here.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use bytes::BytesMut;

use super::io::Waker;
use crate::handshake::{SESSION_ID_LEN, ServerHandshake};

/// Slots per ring. A hand-off happens once per tunnel connection, so this only has to absorb a
/// burst of reconnecting clients; beyond it a worker keeps the rest in its own backlog.
const RING_SLOTS: usize = 256;

/// What one worker passes to another.
#[derive(Debug)]
pub(super) enum Handoff {
    /// A tunnel connection whose ClientHello names a session that lives on the receiving worker.
    Tunnel {
        /// The connection, out of the sending worker's driver.
        sock: TcpStream,
        /// Plaintext already received from it (the start of the ClientHello, at least).
        received: BytesMut,
        /// Its record layer, past the TLS handshake (everything it wrote has been written).
        tls: Box<crate::tls::TunnelTls>,
        /// The handshake, started when the connection was accepted (its deadline runs on).
        handshake: Box<ServerHandshake>,
        /// The remote address.
        peer: SocketAddr,
    },
}

/// One worker's ends of the rings: a producer towards every other worker, a consumer from each.
pub(super) struct Mailbox {
    index: usize,
    outgoing: Vec<Option<rtrb::Producer<Handoff>>>,
    incoming: Vec<rtrb::Consumer<Handoff>>,
    wakers: Arc<[Arc<Waker>]>,
    /// Messages that found their ring full, retried on every turn of the loop.
    backlog: VecDeque<(usize, Handoff)>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("index", &self.index)
            .field("workers", &self.wakers.len())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl Mailbox {
    /// One mailbox per worker, wired so that `mailboxes[i]` can send to every `j != i`;
    /// `wakers[j]` interrupts worker `j`'s wait.
    pub(super) fn wire(wakers: Arc<[Arc<Waker>]>) -> Vec<Mailbox> {
        let n = wakers.len();
        let mut boxes: Vec<Mailbox> = (0..n)
            .map(|index| Mailbox {
                index,
                outgoing: (0..n).map(|_| None).collect(),
                incoming: Vec::new(),
                wakers: wakers.clone(),
                backlog: VecDeque::new(),
            })
            .collect();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    let (producer, consumer) = rtrb::RingBuffer::new(RING_SLOTS);
                    boxes[from].outgoing[to] = Some(producer);
                    boxes[to].incoming.push(consumer);
                }
            }
        }
        boxes
    }

    /// This worker's index.
    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// How many workers the runtime has.
    pub(super) fn workers(&self) -> usize {
        self.wakers.len()
    }

    /// Sends `msg` to worker `to` and wakes it; a full ring keeps the message for
    /// [`Mailbox::retry`].
    pub(super) fn send(&mut self, to: usize, msg: Handoff) {
        if !self.backlog.is_empty() {
            // Keep order behind what is already waiting.
            self.backlog.push_back((to, msg));
            return;
        }
        if let Err(msg) = self.push(to, msg) {
            self.backlog.push_back((to, msg));
        }
    }

    /// Sends what found its ring full earlier. True while some is still waiting.
    pub(super) fn retry(&mut self) -> bool {
        while let Some((to, msg)) = self.backlog.pop_front() {
            if let Err(msg) = self.push(to, msg) {
                self.backlog.push_front((to, msg));
                return true;
            }
        }
        false
    }

    fn push(&mut self, to: usize, msg: Handoff) -> Result<(), Handoff> {
        let Some(Some(ring)) = self.outgoing.get_mut(to) else {
            // No such worker: a bug in the caller, but the socket must not be lost silently.
            tracing::error!(
                to,
                "hand-off to a worker that does not exist; handling it here"
            );
            return Err(msg);
        };
        match ring.push(msg) {
            Ok(()) => {
                if let Err(e) = self.wakers[to].wake() {
                    tracing::warn!(to, "cannot wake worker: {e}");
                }
                Ok(())
            }
            Err(rtrb::PushError::Full(msg)) => Err(msg),
        }
    }

    /// The next message from any other worker.
    pub(super) fn receive(&mut self) -> Option<Handoff> {
        self.incoming.iter_mut().find_map(|ring| ring.pop().ok())
    }
}

/// The worker that owns the session `id` among `workers`. Session ids are random (chosen by the
/// client), so their first bytes spread sessions evenly; every tunnel of a session, including
/// ones re-dialed later, lands on the same worker without any shared table.
pub(super) fn home_worker(id: &[u8; SESSION_ID_LEN], workers: usize) -> usize {
    let mut first = [0; 8];
    first.copy_from_slice(&id[..8]);
    (u64::from_le_bytes(first) % workers.max(1) as u64) as usize
}

/// Pins the calling thread to the `index`-th core the process may run on (wrapping around when
/// there are more workers than cores). Returns the core's id, or `None` when pinning failed.
pub(super) fn pin_to_core(index: usize) -> Option<usize> {
    let cores = core_affinity::get_core_ids()?;
    let core = *cores.get(index % cores.len().max(1))?;
    core_affinity::set_for_current(core).then_some(core.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_worker_spreads_and_is_stable() {
        let mut counts = [0usize; 4];
        for i in 0u64..4000 {
            let mut id = [0u8; 16];
            // Stand-in for random ids: a multiplicative hash of the counter.
            id[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
            let home = home_worker(&id, 4);
            assert_eq!(home, home_worker(&id, 4));
            counts[home] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        assert_eq!(home_worker(&[0xff; 16], 1), 0);
    }
}
