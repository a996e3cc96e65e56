//! The impairment model of one direction of the emulated WAN, as pure code: the caller passes
//! the time (nanoseconds on its own clock) and packets in, and takes packets out when they are
//! due. No sockets, no clock of its own, so it is unit-tested deterministically.
//!
//! A packet arriving at time `t` goes through, in order:
//! 1. loss: Bernoulli (`loss`) and Gilbert–Elliott (`ge`: p = P(good→bad), r = P(bad→good),
//!    h = loss in the bad state, k = loss in the good state);
//! 2. the per-flow (5-tuple) cap: a token-bucket policer (drops above the rate, `flow-burst`
//!    deep) or a shaper (delays to the rate, drops beyond `flow-queue` of backlog);
//! 3. the bottleneck: serialisation at `rate` behind a drop-tail queue of `queue`
//!    (a time at the link rate, or bytes);
//! 4. propagation: `delay` plus uniform jitter in ±`jitter`, clamped so that departures never go
//!    backwards (jitter never reorders).

use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use mtcpd_common::units::{
    QueueLimit, parse_bytes, parse_duration_or_seconds, parse_probability, parse_queue, parse_rate,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

/// How the per-flow cap treats excess traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMode {
    Police,
    Shape,
}

/// Gilbert–Elliott loss parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ge {
    pub p: f64,
    pub r: f64,
    pub h: f64,
    pub k: f64,
}

/// Impairments of one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Impair {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub ge: Option<Ge>,
    /// Bottleneck rate in bits/s.
    pub rate: Option<u64>,
    pub queue: QueueLimit,
    /// Per-flow cap in bits/s.
    pub flow_cap: Option<u64>,
    pub flow_mode: FlowMode,
    /// Policer bucket depth in bytes (default: 50 ms at the cap, at least 16 KiB).
    pub flow_burst: Option<u64>,
    /// Shaper backlog limit.
    pub flow_queue: Duration,
}

impl Default for Impair {
    fn default() -> Self {
        Impair {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            ge: None,
            rate: None,
            queue: QueueLimit::Time(Duration::from_millis(100)),
            flow_cap: None,
            flow_mode: FlowMode::Police,
            flow_burst: None,
            flow_queue: Duration::from_millis(100),
        }
    }
}

impl Impair {
    /// Set one parameter by name (the names of the command-line flags, without `--`).
    pub fn set(&mut self, key: &str, val: &str) -> Result<()> {
        let ctx = || format!("impairment {key}={val}");
        match key {
            "delay" => self.delay = parse_duration_or_seconds(val).with_context(ctx)?,
            "jitter" => self.jitter = parse_duration_or_seconds(val).with_context(ctx)?,
            "loss" => self.loss = parse_probability(val).with_context(ctx)?,
            "ge" => self.ge = Some(parse_ge(val).with_context(ctx)?),
            "rate" => self.rate = Some(parse_rate(val).with_context(ctx)?),
            "queue" => self.queue = parse_queue(val).with_context(ctx)?,
            "flow-cap" => self.flow_cap = Some(parse_rate(val).with_context(ctx)?),
            "flow-mode" => {
                self.flow_mode = match val {
                    "police" => FlowMode::Police,
                    "shape" => FlowMode::Shape,
                    _ => bail!("{}: flow-mode is police or shape", ctx()),
                }
            }
            "flow-burst" => self.flow_burst = Some(parse_bytes(val).with_context(ctx)?),
            "flow-queue" => self.flow_queue = parse_duration_or_seconds(val).with_context(ctx)?,
            _ => bail!(
                "unknown impairment {key:?} (delay, jitter, loss, ge, rate, queue, flow-cap, flow-mode, flow-burst, flow-queue)"
            ),
        }
        Ok(())
    }

    /// Apply `key=val,key=val` overrides.
    pub fn apply_spec(&mut self, spec: &str) -> Result<()> {
        for kv in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("{kv:?}: expected key=value"))?;
            self.set(k.trim(), v.trim())?;
        }
        Ok(())
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        let mut s = format!("delay={:?}", self.delay);
        if !self.jitter.is_zero() {
            s += &format!(" jitter=±{:?}", self.jitter);
        }
        if self.loss > 0.0 {
            s += &format!(" loss={}%", self.loss * 100.0);
        }
        if let Some(g) = self.ge {
            s += &format!(" ge(p={},r={},h={},k={})", g.p, g.r, g.h, g.k);
        }
        if let Some(r) = self.rate {
            s += &format!(
                " rate={} queue={:?}",
                mtcpd_common::units::format_rate(r as f64),
                self.queue
            );
        }
        if let Some(c) = self.flow_cap {
            s += &format!(
                " flow-cap={} ({:?})",
                mtcpd_common::units::format_rate(c as f64),
                self.flow_mode
            );
        }
        s
    }
}

/// `p:r[:h[:k]]`, each a probability (`1%` or `0.01`).
fn parse_ge(s: &str) -> Result<Ge> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=4).contains(&parts.len()) {
        bail!("{s:?}: expected p:r[:h[:k]]");
    }
    Ok(Ge {
        p: parse_probability(parts[0])?,
        r: parse_probability(parts[1])?,
        h: parts
            .get(2)
            .map(|v| parse_probability(v))
            .transpose()?
            .unwrap_or(1.0),
        k: parts
            .get(3)
            .map(|v| parse_probability(v))
            .transpose()?
            .unwrap_or(0.0),
    })
}

/// Counters of one direction.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub drop_loss: u64,
    pub drop_queue: u64,
    pub drop_flow: u64,
    pub drop_filtered: u64,
    pub drop_overflow: u64,
}

#[derive(Default)]
struct FlowState {
    tokens: f64,
    last_ns: u64,
    next_free_ns: u64,
}

/// Hard cap on bytes held by one direction, whatever the configuration.
const MAX_HELD_BYTES: usize = 512 << 20;

/// One direction's state.
pub struct Pipe {
    cfg: Impair,
    rng: Rng,
    ge_bad: bool,
    flows: HashMap<[u8; 13], FlowState>,
    last_gc_ns: u64,
    shaped: BinaryHeap<Reverse<(u64, u64)>>,
    shaped_pkts: HashMap<u64, Vec<u8>>,
    seq: u64,
    link_free_ns: u64,
    last_depart_ns: u64,
    out: VecDeque<(u64, Vec<u8>)>,
    held: usize,
    /// Only IPv4 packets whose destination is in this /24 are forwarded.
    subnet: Option<[u8; 3]>,
    pub stats: Stats,
}

impl Pipe {
    pub fn new(cfg: Impair, seed: u64, subnet: Option<[u8; 3]>) -> Self {
        Pipe {
            cfg,
            rng: Rng::new(seed),
            ge_bad: false,
            flows: HashMap::new(),
            last_gc_ns: 0,
            shaped: BinaryHeap::new(),
            shaped_pkts: HashMap::new(),
            seq: 0,
            link_free_ns: 0,
            last_depart_ns: 0,
            out: VecDeque::new(),
            held: 0,
            subnet,
            stats: Stats::default(),
        }
    }

    /// A packet arrives at `now`. Returns the buffer when the packet is dropped, for reuse.
    pub fn ingest(&mut self, now: u64, pkt: Vec<u8>) -> Option<Vec<u8>> {
        self.advance(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += pkt.len() as u64;
        if let Some(net) = self.subnet
            && !(pkt.len() >= 20 && pkt[0] >> 4 == 4 && pkt[16..19] == net)
        {
            self.stats.drop_filtered += 1;
            return Some(pkt);
        }
        if self.held + pkt.len() > MAX_HELD_BYTES {
            self.stats.drop_overflow += 1;
            return Some(pkt);
        }
        // 1. loss
        let mut lost = self.rng.chance(self.cfg.loss);
        if let Some(g) = self.cfg.ge {
            self.ge_bad = if self.ge_bad {
                !self.rng.chance(g.r)
            } else {
                self.rng.chance(g.p)
            };
            lost |= self.rng.chance(if self.ge_bad { g.h } else { g.k });
        }
        if lost {
            self.stats.drop_loss += 1;
            return Some(pkt);
        }
        // 2. per-flow cap
        if let Some(cap) = self.cfg.flow_cap {
            let key = flow_key(&pkt);
            self.gc_flows(now);
            let burst = self
                .cfg
                .flow_burst
                .unwrap_or_else(|| (cap / 8 / 20).max(16 * 1024)) as f64;
            let st = self.flows.entry(key).or_insert_with(|| FlowState {
                tokens: burst,
                last_ns: now,
                next_free_ns: 0,
            });
            let len = pkt.len() as u64;
            match self.cfg.flow_mode {
                FlowMode::Police => {
                    let dt = now.saturating_sub(st.last_ns) as f64 / 1e9;
                    st.tokens = (st.tokens + dt * cap as f64 / 8.0).min(burst);
                    st.last_ns = now;
                    if st.tokens < len as f64 {
                        self.stats.drop_flow += 1;
                        return Some(pkt);
                    }
                    st.tokens -= len as f64;
                }
                FlowMode::Shape => {
                    st.last_ns = now;
                    let start = st.next_free_ns.max(now);
                    if start - now > self.cfg.flow_queue.as_nanos() as u64 {
                        self.stats.drop_flow += 1;
                        return Some(pkt);
                    }
                    st.next_free_ns = start + len * 8_000_000_000 / cap;
                    if start > now {
                        self.seq += 1;
                        self.held += pkt.len();
                        self.shaped.push(Reverse((start, self.seq)));
                        self.shaped_pkts.insert(self.seq, pkt);
                        return None;
                    }
                }
            }
        }
        self.link(now, pkt)
    }

    fn gc_flows(&mut self, now: u64) {
        if self.flows.len() > 4096 && now.saturating_sub(self.last_gc_ns) > 1_000_000_000 {
            self.last_gc_ns = now;
            self.flows.retain(|_, f| {
                now.saturating_sub(f.last_ns) < 5_000_000_000 || f.next_free_ns > now
            });
        }
    }

    /// 3 + 4: bottleneck and propagation, for a packet reaching the link at `t`.
    fn link(&mut self, t: u64, pkt: Vec<u8>) -> Option<Vec<u8>> {
        let len = pkt.len() as u64;
        let mut t_out = t;
        if let Some(rate) = self.cfg.rate {
            let backlog_ns = self.link_free_ns.saturating_sub(t);
            let over = match self.cfg.queue {
                QueueLimit::Time(q) => backlog_ns > q.as_nanos() as u64,
                QueueLimit::Bytes(b) => {
                    (backlog_ns as u128 * rate as u128 / 8_000_000_000) as u64 + len > b.max(len)
                }
            };
            if over {
                self.stats.drop_queue += 1;
                return Some(pkt);
            }
            let start = self.link_free_ns.max(t);
            self.link_free_ns = start + len * 8_000_000_000 / rate;
            t_out = self.link_free_ns;
        }
        let mut depart = t_out + self.cfg.delay.as_nanos() as u64;
        if !self.cfg.jitter.is_zero() {
            let j = self.cfg.jitter.as_nanos() as f64;
            let off = (self.rng.next_f64() * 2.0 - 1.0) * j;
            depart = (depart as f64 + off).max(t_out as f64) as u64;
        }
        depart = depart.max(self.last_depart_ns);
        self.last_depart_ns = depart;
        self.held += pkt.len();
        self.out.push_back((depart, pkt));
        None
    }

    /// Move shaped packets whose time has come onto the link.
    pub fn advance(&mut self, now: u64) {
        while let Some(&Reverse((t, seq))) = self.shaped.peek() {
            if t > now {
                break;
            }
            self.shaped.pop();
            if let Some(p) = self.shaped_pkts.remove(&seq) {
                self.held -= p.len();
                if let Some(dropped) = self.link(t, p) {
                    drop(dropped);
                }
            }
        }
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.out.front() {
            Some((d, _)) if *d <= now => {
                let (_, p) = self.out.pop_front()?;
                self.held -= p.len();
                self.stats.packets_out += 1;
                self.stats.bytes_out += p.len() as u64;
                Some(p)
            }
            _ => None,
        }
    }

    /// When something next becomes due, if anything is held.
    pub fn next_event(&self) -> Option<u64> {
        let a = self.out.front().map(|(d, _)| *d);
        let b = self.shaped.peek().map(|Reverse((t, _))| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The 5-tuple of an IPv4 packet (protocol, addresses, TCP/UDP ports); zeros where absent.
fn flow_key(p: &[u8]) -> [u8; 13] {
    let mut k = [0u8; 13];
    if p.len() < 20 || p[0] >> 4 != 4 {
        return k;
    }
    k[0] = p[9];
    k[1..9].copy_from_slice(&p[12..20]);
    let ihl = (p[0] & 0x0f) as usize * 4;
    let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    if (p[9] == 6 || p[9] == 17) && frag_off == 0 && p.len() >= ihl + 4 {
        k[9..13].copy_from_slice(&p[ihl..ihl + 4]);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn pkt(len: usize, sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 200, 1, 1]);
        p[16..20].copy_from_slice(&[10, 200, 1, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p
    }

    /// Drain a pipe by stepping the clock; returns departure times.
    fn drain(pipe: &mut Pipe, mut now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(t) = pipe.next_event() {
            now = now.max(t);
            pipe.advance(now);
            while pipe.pop_due(now).is_some() {
                out.push(now);
            }
        }
        out
    }

    #[test]
    fn delay_and_monotonic_jitter() {
        let mut c = Impair::default();
        c.set("delay", "20ms").unwrap();
        c.set("jitter", "5ms").unwrap();
        let mut p = Pipe::new(c, 1, None);
        let mut departs = Vec::new();
        for i in 0..1000u64 {
            let now = i * 100_000; // every 0.1 ms
            assert!(p.ingest(now, pkt(100, 1)).is_none());
            departs.push(now);
        }
        // Compute departures precisely from the queue.
        let d: Vec<u64> = p.out.iter().map(|(d, _)| *d).collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "jitter reordered");
        for (a, dep) in departs.iter().zip(&d) {
            assert!(*dep >= a + 15 * MS && *dep <= a + 25 * MS + 5 * MS);
        }
    }

    #[test]
    fn bernoulli_and_ge_loss_rates() {
        let mut c = Impair::default();
        c.set("loss", "1%").unwrap();
        let mut p = Pipe::new(c, 7, None);
        for i in 0..100_000 {
            let _ = p.ingest(i, pkt(60, 1));
        }
        assert!(
            (800..1200).contains(&p.stats.drop_loss),
            "{}",
            p.stats.drop_loss
        );

        let mut c = Impair::default();
        // Stationary bad fraction p/(p+r) = 0.01/(0.01+0.09) = 10 %, all lost there.
        c.set("ge", "1%:9%").unwrap();
        let mut p = Pipe::new(c, 7, None);
        for i in 0..100_000 {
            let _ = p.ingest(i, pkt(60, 1));
        }
        assert!(
            (8_000..12_000).contains(&p.stats.drop_loss),
            "{}",
            p.stats.drop_loss
        );
    }

    #[test]
    fn bottleneck_rate_and_droptail() {
        let mut c = Impair::default();
        c.set("rate", "8mbit").unwrap(); // 1 byte per µs
        c.set("queue", "10ms").unwrap();
        let mut p = Pipe::new(c, 1, None);
        // 100 packets of 1000 B at once: 1 ms each, queue holds ~10 ms.
        for _ in 0..100 {
            let _ = p.ingest(0, pkt(1000, 1));
        }
        assert_eq!(p.stats.drop_queue, 100 - 11);
        let d = drain(&mut p, 0);
        assert_eq!(d.len(), 11);
        assert_eq!(*d.last().unwrap(), 11 * MS);
    }

    #[test]
    fn flow_police_and_shape() {
        let mut c = Impair::default();
        c.set("flow-cap", "8mbit").unwrap();
        c.set("flow-burst", "10k").unwrap();
        let mut p = Pipe::new(c.clone(), 1, None);
        // Two flows offering 2 MB/s each for 1 s: each should pass ~1 MB + burst.
        for i in 0..2000u64 {
            let _ = p.ingest(i * 500_000, pkt(1000, 1));
            let _ = p.ingest(i * 500_000, pkt(1000, 2));
        }
        let passed = p.stats.packets_in - p.stats.drop_flow;
        assert!((2000..2040).contains(&passed), "{passed}");

        c.set("flow-mode", "shape").unwrap();
        let mut p = Pipe::new(c, 1, None);
        for _ in 0..50 {
            let _ = p.ingest(0, pkt(1000, 1));
        }
        let d = drain(&mut p, 0);
        assert_eq!(d.len(), 50);
        assert_eq!(*d.last().unwrap(), 49 * MS);
    }

    #[test]
    fn subnet_filter_and_specs() {
        let mut p = Pipe::new(Impair::default(), 1, Some([10, 200, 1]));
        assert!(p.ingest(0, pkt(100, 1)).is_none());
        let mut other = pkt(100, 1);
        other[16..20].copy_from_slice(&[8, 8, 8, 8]);
        assert!(p.ingest(0, other).is_some());
        assert_eq!(p.stats.drop_filtered, 1);
        let mut c = Impair::default();
        c.apply_spec("delay=50ms, loss=1%,rate=20mbit,queue=64k")
            .unwrap();
        assert_eq!(c.delay, Duration::from_millis(50));
        assert!(c.apply_spec("bogus=1").is_err());
        assert!(c.apply_spec("delay").is_err());
    }
}
