//! A shared bottleneck for the simulated network ([`crate::sim::SimPair::with_bottleneck`]):
//! every tunnel of one direction sends its segments through ONE drop-tail queue in bytes,
//! drained at the link rate, with Bernoulli random loss on top; and each tunnel becomes a
//! TCP-like sender: a congestion window (slow start, then additive increase; halved once per
//! window of data on a loss), retransmission of a lost segment about one RTT after it was
//! sent, and in-order delivery at the receiver, so a lost segment holds back everything its
//! tunnel sent after it (TCP's head-of-line blocking) until the retransmission arrives.
//!
//! Owns: the queue, the loss draws and the per-tunnel TCP model. Must not touch: the
//! sessions, the record layer or connection state (`sim` does those, and hands this module
//! the sealed bytes of a tunnel and takes back the bytes its receiver may read).
//!
//! Deliberately simple: ACKs travel on an uncongested return path and are never lost, loss is
//! detected one RTT (plus the queueing delay) after the send, there is no pacing, and no RTO unless
//! [`BottleneckSpec::rto`] is set (then a lost retransmission waits that much longer).
//! That is enough to show what the issue is about: N windows filling one queue.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;

use super::{Conn, SimPair};
use crate::path::TcpReport;

/// The shared bottleneck of one direction.
#[derive(Debug, Clone, Copy)]
pub struct BottleneckSpec {
    /// Link rate, bytes per second (of segment payload: headers are not modelled).
    pub rate: f64,
    /// Drop-tail queue, bytes.
    pub queue: usize,
    /// Probability that a segment is lost at random (0.0..=1.0).
    pub loss: f64,
    /// Segment size, bytes.
    pub mss: usize,
    /// Zero: every loss is repaired one RTT after the send (a fast retransmit). Otherwise a
    /// lost retransmission is noticed only after this much more (Linux's minimum
    /// retransmission timeout is 200 ms): the RTO-bound recoveries that hold a stream longest.
    pub rto: Duration,
    /// Random losses do not shrink a window, only queue drops do: a loss-blind congestion
    /// control such as bbr, which reaches the link rate at 1 % random loss where a Reno-like
    /// window (the default) would crawl.
    pub loss_blind: bool,
}

impl BottleneckSpec {
    /// `mbit` Mbit/s, a queue of `queue_ms` at that rate, random loss `loss` (0.01 = 1 %),
    /// 1448-byte segments.
    pub fn new(mbit: f64, queue_ms: u64, loss: f64) -> Self {
        let rate = mbit * 1e6 / 8.0;
        Self {
            rate,
            queue: (rate * queue_ms as f64 / 1e3) as usize,
            loss: loss.clamp(0.0, 1.0),
            mss: 1448,
            rto: Duration::ZERO,
            loss_blind: false,
        }
    }
}

/// What the bottleneck of one direction counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BottleneckStats {
    /// Segments offered to the queue (retransmissions included).
    pub segments: u64,
    /// Segments the full queue dropped.
    pub drops_queue: u64,
    /// Segments lost at random.
    pub drops_loss: u64,
    /// Largest queue occupancy seen, bytes.
    pub max_queue: usize,
    /// Payload bytes that left the queue.
    pub bytes_out: u64,
}

/// Most a window may grow to (a 64 MiB receive buffer).
const MAX_CWND: usize = 64 << 20;
/// Initial window, segments (Linux's IW10).
const INIT_CWND_SEGMENTS: usize = 10;

/// The queue and its counters.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) spec: BottleneckSpec,
    /// Departure time and size of every segment in the queue, oldest first.
    queued: VecDeque<(Instant, usize)>,
    queued_bytes: usize,
    busy_until: Instant,
    pub(crate) stats: BottleneckStats,
}

impl Shared {
    pub(crate) fn new(spec: BottleneckSpec, now: Instant) -> Self {
        Self {
            spec,
            queued: VecDeque::new(),
            queued_bytes: 0,
            busy_until: now,
            stats: BottleneckStats::default(),
        }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(&(dep, len)) = self.queued.front() {
            if dep > now {
                break;
            }
            self.queued.pop_front();
            self.queued_bytes -= len;
        }
    }

    /// Offers a segment of `len` bytes at `now`: its departure time, or `Err((when, queue))`
    /// with the time the sender would have learnt of the loss had it been delivered (for the
    /// retransmission timing) and whether the full queue dropped it (not random loss).
    fn offer(
        &mut self,
        now: Instant,
        len: usize,
        rng: &mut StdRng,
    ) -> Result<Instant, (Instant, bool)> {
        self.drain(now);
        self.stats.segments += 1;
        let start = self.busy_until.max(now);
        if self.queued_bytes + len > self.spec.queue {
            self.stats.drops_queue += 1;
            return Err((start, true));
        }
        if self.spec.loss > 0.0 && rng.random::<f64>() < self.spec.loss {
            self.stats.drops_loss += 1;
            return Err((start, false));
        }
        let dep = start + Duration::from_secs_f64(len as f64 / self.spec.rate);
        self.busy_until = dep;
        self.queued.push_back((dep, len));
        self.queued_bytes += len;
        self.stats.max_queue = self.stats.max_queue.max(self.queued_bytes);
        self.stats.bytes_out += len as u64;
        Ok(dep)
    }
}

/// One tunnel's direction as a TCP sender and receiver behind the shared queue.
#[derive(Debug)]
pub(crate) struct TcpDir {
    /// Sealed bytes from the session not yet segmented (the socket's unsent queue).
    unsent: VecDeque<Bytes>,
    unsent_bytes: usize,
    /// Lost segments waiting to be sent again, before any new data.
    retx: VecDeque<(u64, Bytes)>,
    cwnd: usize,
    ssthresh: usize,
    inflight: usize,
    next_seq: u64,
    /// Losses of segments sent before this sequence number belong to the window already
    /// reduced for (one reduction per window, as NewReno).
    recover: u64,
    /// When each segment's ACK reaches the sender, its size, and when it was sent if it was
    /// not a retransmission (an RTT sample, as Karn's rule takes them).
    acks: VecDeque<(Instant, usize, Option<Instant>)>,
    /// Smoothed and minimum RTT of the connection, as the kernel's TCP_INFO reports them.
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// The last send stopped at the window with data left to send: only then do ACKs grow the
    /// window (Linux's `tcp_is_cwnd_limited`; a window the sender does not fill says nothing
    /// about the path, and growing it unused would let it dump a burst later).
    cwnd_limited: bool,
    /// Something TCP_INFO shows changed since [`TcpDir::take_info`] last read it.
    info_changed: bool,
    /// When the sender learns of each lost segment, and whether the full queue dropped it.
    losses: VecDeque<(Instant, u64, Bytes, bool)>,
    /// When each delivered segment reaches the receiver.
    arrivals: VecDeque<(Instant, u64, Bytes)>,
    /// Segments received beyond a hole.
    reorder: BTreeMap<u64, Bytes>,
    rcv_next: u64,
    /// Segments this sender retransmitted.
    pub(crate) retransmits: u64,
    /// Bytes the receiver got (each segment once, when it arrives: TCP_INFO's delivered count).
    delivered: u64,
}

impl TcpDir {
    pub(crate) fn new(mss: usize) -> Self {
        Self {
            unsent: VecDeque::new(),
            unsent_bytes: 0,
            retx: VecDeque::new(),
            cwnd: INIT_CWND_SEGMENTS * mss,
            ssthresh: MAX_CWND,
            inflight: 0,
            next_seq: 0,
            recover: 0,
            acks: VecDeque::new(),
            srtt: None,
            min_rtt: None,
            info_changed: false,
            cwnd_limited: false,
            losses: VecDeque::new(),
            arrivals: VecDeque::new(),
            reorder: BTreeMap::new(),
            rcv_next: 0,
            retransmits: 0,
            delivered: 0,
        }
    }

    /// Bytes the session handed over that have not been segmented yet.
    pub(crate) fn unsent_bytes(&self) -> usize {
        self.unsent_bytes
    }

    /// The congestion window, bytes.
    pub(crate) fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// What TCP_INFO shows (smoothed and minimum RTT, retransmitted segments, bytes in flight
    /// and unsent), when the RTTs or the retransmissions changed since the last call and the
    /// RTT is measured.
    fn take_info(&mut self) -> Option<TcpReport> {
        let (srtt, min_rtt) = self.srtt.zip(self.min_rtt)?;
        std::mem::take(&mut self.info_changed).then_some(TcpReport {
            srtt,
            min_rtt,
            retransmits: self.retransmits,
            held_bytes: (self.inflight + self.unsent_bytes) as u64,
            cwnd_bytes: self.cwnd as u64,
            unsent_bytes: self.unsent_bytes as u64,
            delivered_bytes: self.delivered,
        })
    }

    /// Takes sealed bytes from the session.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.unsent_bytes += chunk.len();
        self.unsent.push_back(chunk);
    }

    /// Processes what is due at `now` (ACKs, loss notices, arrivals: in-order bytes go to
    /// `readable`), then sends what the window allows into `shared`.
    pub(crate) fn step(
        &mut self,
        now: Instant,
        delay: Duration,
        shared: &mut Shared,
        rng: &mut StdRng,
        readable: &mut VecDeque<(Instant, Bytes)>,
    ) {
        let mss = shared.spec.mss;
        if self.srtt.is_none() {
            // The handshake's sample (SYN → SYN-ACK over an empty queue), as Linux seeds it.
            self.srtt = Some(2 * delay);
            self.min_rtt = Some(2 * delay);
            self.info_changed = true;
        }
        while let Some(&(at, len, sent)) = self.acks.front() {
            if at > now {
                break;
            }
            self.acks.pop_front();
            if let Some(sent) = sent {
                let rtt = at - sent;
                self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                self.info_changed = true;
            }
            self.inflight -= len;
            self.delivered += len as u64;
            // A window the sender does not fill does not grow.
            if self.cwnd_limited && self.cwnd < self.ssthresh {
                self.cwnd += len;
            } else if self.cwnd_limited {
                self.cwnd += (mss * len / self.cwnd).max(1);
            }
            self.cwnd = self.cwnd.min(MAX_CWND);
        }
        while let Some((at, _, _, _)) = self.losses.front() {
            if *at > now {
                break;
            }
            let Some((_, seq, seg, queue)) = self.losses.pop_front() else {
                break;
            };
            self.inflight -= seg.len();
            if seq >= self.recover && (queue || !shared.spec.loss_blind) {
                self.ssthresh = (self.cwnd / 2).max(2 * mss);
                self.cwnd = self.ssthresh;
                self.recover = self.next_seq;
            }
            self.retx.push_back((seq, seg));
        }
        while let Some((at, _, _)) = self.arrivals.front() {
            if *at > now {
                break;
            }
            let Some((_, seq, seg)) = self.arrivals.pop_front() else {
                break;
            };
            self.reorder.insert(seq, seg);
        }
        while let Some(seg) = self.reorder.remove(&self.rcv_next) {
            self.rcv_next += seg.len() as u64;
            readable.push_back((now, seg));
        }
        // Send: retransmissions first, then new data, while the window has room.
        self.cwnd_limited = true;
        while self.inflight + mss <= self.cwnd || self.inflight == 0 {
            let mut fresh = true;
            let (seq, seg) = if let Some(r) = self.retx.pop_front() {
                self.retransmits += 1;
                self.info_changed = true;
                fresh = false;
                r
            } else if let Some(front) = self.unsent.front_mut() {
                let seg = if front.len() > mss {
                    front.split_to(mss)
                } else {
                    let Some(whole) = self.unsent.pop_front() else {
                        break;
                    };
                    whole
                };
                self.unsent_bytes -= seg.len();
                let seq = self.next_seq;
                self.next_seq += seg.len() as u64;
                (seq, seg)
            } else {
                self.cwnd_limited = false;
                break;
            };
            self.inflight += seg.len();
            match shared.offer(now, seg.len(), rng) {
                Ok(dep) => {
                    self.arrivals.push_back((dep + delay, seq, seg.clone()));
                    self.acks
                        .push_back((dep + 2 * delay, seg.len(), fresh.then_some(now)));
                }
                Err((start, queue)) => {
                    let rto = if !fresh {
                        shared.spec.rto
                    } else {
                        Duration::ZERO
                    };
                    let at = start + 2 * delay + rto;
                    // Loss notices stay in time order (a timed-out one may come after later
                    // fast ones).
                    let i = self.losses.partition_point(|l| l.0 <= at);
                    self.losses.insert(i, (at, seq, seg, queue));
                }
            }
        }
    }

    /// The next time something is due.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        [
            self.acks.front().map(|a| a.0),
            self.losses.front().map(|l| l.0),
            self.arrivals.front().map(|a| a.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The bottleneck's side of [`SimPair`]: switching it on, its counters, and moving every
/// tunnel's TCP model along.
impl SimPair {
    /// Every tunnel of each direction shares one bottleneck (`spec`, each direction its own
    /// queue) and behaves as a TCP flow behind it; the links' own rates no longer apply, their
    /// delays and send buffers do. Call before the first run.
    pub fn with_bottleneck(mut self, spec: BottleneckSpec) -> Self {
        let now = self.now;
        self.bottleneck = Some([Shared::new(spec, now), Shared::new(spec, now)]);
        for link in &mut self.links {
            for d in &mut link.dirs {
                d.reset(now, Some(spec.mss));
            }
        }
        self
    }

    /// What the bottleneck of `dir` (0: client→server, 1: server→client) counted so far.
    pub fn bottleneck_stats(&self, dir: usize) -> Option<BottleneckStats> {
        self.bottleneck.as_ref().map(|b| b[dir].stats)
    }

    /// Segments tunnel `t` retransmitted in direction `dir`, and its congestion window (bytes),
    /// behind a bottleneck.
    pub fn tunnel_tcp(&self, t: usize, dir: usize) -> Option<(u64, usize)> {
        self.links[t].dirs[dir]
            .tcp
            .as_ref()
            .map(|c| (c.retransmits, c.cwnd()))
    }

    /// Moves every tunnel's TCP model to `now` (behind a bottleneck only).
    pub(super) fn step_bottleneck(&mut self) {
        let Some(shared) = &mut self.bottleneck else {
            return;
        };
        let now = self.now;
        for (d, q) in shared.iter_mut().enumerate() {
            // Start with a different tunnel each time, so no tunnel always queues first.
            let n = self.links.len();
            let first = if n == 0 {
                0
            } else {
                (now - self.start).subsec_nanos() as usize % n
            };
            for k in 0..n {
                let link = &mut self.links[(first + k) % n];
                let delay = link.spec.delay;
                let dir = &mut link.dirs[d];
                if let Some(tcp) = &mut dir.tcp {
                    tcp.step(now, delay, q, &mut self.rng, &mut dir.propagating);
                    dir.serializing_bytes = tcp.unsent_bytes();
                }
            }
        }
        self.report_tcp_rtts();
    }

    /// Tells each sending session what TCP_INFO would show of its tunnels, as a driver does.
    fn report_tcp_rtts(&mut self) {
        for t in 0..self.links.len() {
            let infos = [0, 1].map(|d| {
                self.links[t].dirs[d]
                    .tcp
                    .as_mut()
                    .and_then(TcpDir::take_info)
            });
            if let Some(report) = infos[0] {
                self.client.set_tunnel_tcp_info(t, self.now, report);
            }
            let attached = match self.links[t].conn {
                Conn::Open { attached, .. } => attached,
                _ => None,
            };
            if let (Some(report), Some(s)) =
                (infos[1], attached.and_then(|k| self.server.get_mut(k)))
            {
                s.session_mut().set_tunnel_tcp_info(t, self.now, report);
            }
        }
    }
}
