//! Workers: the threads of one runtime, and what crosses between them.
//!
//! Owns: the lock-free single-producer single-consumer rings between every ordered pair of
//! workers (one [`Mailbox`] per worker holds its ends), the messages sent through them
//! ([`Handoff`]) and the bound on those waiting for a full ring, the rule that names a session's
//! home worker ([`Placement`], keyed per runtime), and pinning a worker to a core. Must not touch: sockets or sessions themselves (the event loop owns those;
//! this module only carries them from one loop to another).
//!
//! A session and everything it owns (tunnels, streams, application sockets) lives on one worker
//! for its whole life, so the data path never takes a lock. The only thing that crosses cores is
//! a tunnel connection the kernel's `SO_REUSEPORT` balancing gave to another worker than its
//! session's home: that worker reads the first 24 bytes of its ClientHello, learns the session
//! id, and hands the socket (with the bytes already read) to the home worker here.
//!
//! The session id is the client's choice, so the home worker is a keyed hash of it (SipHash
//! with keys drawn at runtime start): a peer cannot aim its connections at one worker.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::io::Waker;
use crate::handshake::{SESSION_ID_LEN, ServerHandshake};

/// Slots per ring. A hand-off happens once per tunnel connection, so this only has to absorb a
/// burst of reconnecting clients; beyond it a worker keeps the rest in its own backlog (bounded:
/// [`Mailbox::wire`]'s `backlog_limit`).
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
        /// Ciphertext received after the last whole record (the start of the next one).
        unopened: Box<[u8]>,
        /// The handshake, started when the connection was accepted (its deadline runs on).
        handshake: Box<ServerHandshake>,
        /// The remote address.
        peer: SocketAddr,
        /// When the connection was accepted: a hand-off adopted after the pre-auth deadline is
        /// closed instead.
        accepted_at: Instant,
    },
    /// A connection to a reverse listener (accepted by worker 0) for a session that lives on
    /// the receiving worker.
    Reverse {
        /// The connection, out of the sending worker's driver.
        sock: TcpStream,
        /// Bytes already received from it.
        early: bytes::Bytes,
        /// The session that exposes the service.
        session: crate::handshake::SessionId,
        /// The reverse listener (its index in the server's configuration).
        index: usize,
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
    /// Most messages in `backlog`: each holds a socket of a peer that has proved nothing yet.
    backlog_limit: usize,
    /// Where sessions live.
    placement: Placement,
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
    /// `wakers[j]` interrupts worker `j`'s wait. Each keeps at most `backlog_limit` messages
    /// waiting for a full ring, and places sessions with `placement` (the same for all).
    pub(super) fn wire(
        wakers: Arc<[Arc<Waker>]>,
        backlog_limit: usize,
        placement: Placement,
    ) -> Vec<Mailbox> {
        let n = wakers.len();
        let mut boxes: Vec<Mailbox> = (0..n)
            .map(|index| Mailbox {
                index,
                outgoing: (0..n).map(|_| None).collect(),
                incoming: Vec::new(),
                wakers: wakers.clone(),
                backlog: VecDeque::new(),
                backlog_limit,
                placement: placement.clone(),
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

    /// The worker that owns session `id` (see [`Placement`]).
    pub(super) fn home_worker(&self, id: &[u8; SESSION_ID_LEN]) -> usize {
        self.placement.home_worker(id, self.workers())
    }

    /// Sends `msg` to worker `to` and wakes it; a full ring keeps the message for
    /// [`Mailbox::retry`]. Gives the message back when the backlog is full too (the caller
    /// closes the connection).
    pub(super) fn send(&mut self, to: usize, msg: Handoff) -> Result<(), Handoff> {
        if self.backlog.len() >= self.backlog_limit {
            return Err(msg);
        }
        if !self.backlog.is_empty() {
            // Keep order behind what is already waiting.
            self.backlog.push_back((to, msg));
            return Ok(());
        }
        if let Err(msg) = self.push(to, msg) {
            self.backlog.push_back((to, msg));
        }
        Ok(())
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

    /// Wakes worker `to` (it has something to look at in state shared with this one).
    pub(super) fn wake(&self, to: usize) {
        if let Some(w) = self.wakers.get(to)
            && let Err(e) = w.wake()
        {
            tracing::warn!(to, "cannot wake worker: {e}");
        }
    }

    /// The next message from any other worker.
    pub(super) fn receive(&mut self) -> Option<Handoff> {
        self.incoming.iter_mut().find_map(|ring| ring.pop().ok())
    }
}

/// Which worker a session lives on: a keyed hash (SipHash, keys drawn from the OS when the
/// runtime starts) of its id. Every tunnel of a session, including ones re-dialed later, lands
/// on the same worker without any shared table; a peer, which picks the id, cannot tell which
/// worker an id maps to, so it cannot pile its handshakes onto one. Clones share the keys (all
/// the workers of one runtime); two runtimes place differently.
#[derive(Debug, Clone, Default)]
pub(super) struct Placement {
    keys: RandomState,
}

impl Placement {
    /// A placement with fresh random keys.
    pub(super) fn random() -> Self {
        Self::default()
    }

    /// The worker that owns the session `id` among `workers`.
    pub(super) fn home_worker(&self, id: &[u8; SESSION_ID_LEN], workers: usize) -> usize {
        (self.keys.hash_one(id) % workers.max(1) as u64) as usize
    }
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
    use crate::config::Config;
    use crate::endpoint::{Endpoint, SessionBudget};

    #[test]
    fn home_worker_spreads_and_is_stable() {
        let placement = Placement::random();
        let shared = placement.clone();
        let mut counts = [0usize; 4];
        for i in 0u64..4000 {
            // Ids an attacker would pick: a counter, not random at all.
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            let home = placement.home_worker(&id, 4);
            assert_eq!(home, placement.home_worker(&id, 4));
            assert_eq!(home, shared.home_worker(&id, 4), "clones share the keys");
            counts[home] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        assert_eq!(placement.home_worker(&[0xff; 16], 1), 0);
    }

    #[test]
    fn two_runtimes_place_the_same_ids_differently() {
        // An attacker that learned where its ids land on one runtime (or computed an unkeyed
        // hash) learns nothing about another: about 3 in 4 of 1,000 ids move with 4 workers.
        let a = Placement::random();
        let b = Placement::random();
        let moved = (0u64..1000)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&i.to_le_bytes());
                a.home_worker(&id, 4) != b.home_worker(&id, 4)
            })
            .count();
        assert!((600..900).contains(&moved), "{moved} of 1000 moved");
    }

    fn handoff(accepted_at: Instant) -> Handoff {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut endpoint = Endpoint::<()>::server(
            Arc::new(Config::default()),
            SessionBudget::unlimited(),
            [1; 32],
        );
        let key = endpoint.accept_connection(accepted_at).unwrap();
        Handoff::Tunnel {
            peer: sock.local_addr().unwrap(),
            sock,
            received: BytesMut::new(),
            tls: Box::new(crate::tls::TunnelTls::plaintext()),
            unopened: Box::default(),
            handshake: endpoint.take_handshake(key).unwrap(),
            accepted_at,
        }
    }

    #[test]
    fn the_backlog_behind_a_full_ring_is_bounded() {
        let (_io, waker) = super::super::io::Mio::new().unwrap();
        let (_io2, waker2) = super::super::io::Mio::new().unwrap();
        let wakers: Arc<[Arc<Waker>]> = vec![Arc::new(waker), Arc::new(waker2)].into();
        let mut boxes = Mailbox::wire(wakers, 3, Placement::random());
        let now = Instant::now();
        // The ring takes RING_SLOTS, the backlog 3 more; the next is given back.
        for n in 0..RING_SLOTS + 3 {
            assert!(boxes[0].send(1, handoff(now)).is_ok(), "message {n}");
        }
        assert!(boxes[0].send(1, handoff(now)).is_err(), "backlog full");
        assert!(boxes[0].retry(), "still waiting");
        // The receiver drains; the backlog moves and there is room again.
        let mut received = 0;
        while boxes[1].receive().is_some() {
            received += 1;
        }
        assert_eq!(received, RING_SLOTS);
        assert!(!boxes[0].retry(), "the backlog went through");
        assert!(boxes[0].send(1, handoff(now)).is_ok());
    }
}
