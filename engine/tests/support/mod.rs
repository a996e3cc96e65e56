//! Test support: an application workload over a [`SimPair`] that checks every byte.
//!
//! Each flow is one stream opened by the client (or by the server: `FlowSpec::opened_by`): the
//! client sends `up` bytes and half-closes; the server sends `down` bytes and half-closes. The
//! end that did not open the stream writes once it saw the OPEN (and, with `reply_after_eof`,
//! only after it read the opener's EOF). Bytes are the test kit's deterministic pattern, one stream per (flow,
//! direction), so the reader checks each byte's value and position as it arrives and also keeps
//! a SHA-256 of the stream to compare with the sender's. A flow may be reset by either side after some bytes; then each side
//! must have received an exact prefix of what was sent.
#![allow(dead_code)]

pub mod direct;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use mtcpd_engine::Config;
use mtcpd_engine::session::{Event, ReadOutcome, StreamId};
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use mtcpd_testkit::pattern::{self, Checksum};

/// What the daemon lets each tunnel socket hold unsent (its TCP_NOTSENT_LOWAT default): the
/// `buffer` of a simulated link behind a shared bottleneck.
pub const DAEMON_UNSENT: usize = mtcpd_engine::runtime::options::DEFAULT_NOTSENT_LOWAT as usize;

/// A plaintext pair with 8 tunnels of 50 ms each way, run until every tunnel is active.
pub fn eight_active_tunnels(config: Config) -> SimPair {
    let links = vec![LinkSpec::new(50, 100.0); 8];
    let mut pair = SimPair::new(config.clone(), config, &links, 1).plaintext();
    assert!(pair.run(Duration::from_secs(10), |p| {
        (0..8).all(|t| p.client.tunnel_is_active(t))
    }));
    pair
}

/// The pattern seed of direction `dir` (0 up, 1 down) of flow `flow`.
pub fn stream_seed(flow: u64, dir: u64) -> u64 {
    (flow << 1) | dir
}

/// `len` bytes of direction `dir` of flow `flow` from `offset`.
pub fn pattern_chunk(flow: u64, dir: u64, offset: u64, len: usize) -> Bytes {
    Bytes::from(pattern::bytes_at(stream_seed(flow, dir), offset, len))
}

#[derive(Debug, Clone)]
pub struct FlowSpec {
    pub up: u64,
    pub down: u64,
    /// Server answers only after reading the client's EOF.
    pub reply_after_eof: bool,
    /// Reset by this side once it has sent this many bytes.
    pub reset: Option<(Side, u64)>,
    pub target: Option<String>,
    /// Which end opens the stream (the server: a reverse tunnel's stream).
    pub opened_by: Side,
}

impl FlowSpec {
    pub fn bulk(up: u64, down: u64) -> Self {
        Self {
            up,
            down,
            reply_after_eof: false,
            reset: None,
            target: None,
            opened_by: Side::Client,
        }
    }

    /// [`FlowSpec::bulk`] on a stream the server opens.
    pub fn server_opened(up: u64, down: u64) -> Self {
        Self {
            opened_by: Side::Server,
            ..Self::bulk(up, down)
        }
    }
}

#[derive(Debug, Default)]
struct Half {
    written: u64,
    fin_sent: bool,
    received: u64,
    fin_received: bool,
    sent_hash: Checksum,
    recv_hash: Checksum,
}

#[derive(Debug)]
struct FlowState {
    spec: FlowSpec,
    stream: Option<StreamId>,
    client: Half,
    server: Half,
    /// The end that did not open the stream saw its OPEN.
    server_seen: bool,
    reset_done: bool,
    reset_seen_client: bool,
    reset_seen_server: bool,
    closed_client: bool,
    closed_server: bool,
}

/// Drives flows and checks them.
#[derive(Debug)]
pub struct Workload {
    flows: Vec<FlowState>,
    by_stream: HashMap<StreamId, usize>,
    pub write_chunk: usize,
    /// Flows whose server side does not read (slow reader) until released.
    pub paused_readers: Vec<usize>,
    pub errors: Vec<String>,
    pub targets_seen: Vec<Option<String>>,
}

impl Workload {
    pub fn new(specs: Vec<FlowSpec>) -> Self {
        Self {
            flows: specs
                .into_iter()
                .map(|spec| FlowState {
                    spec,
                    stream: None,
                    client: Half::default(),
                    server: Half::default(),
                    server_seen: false,
                    reset_done: false,
                    reset_seen_client: false,
                    reset_seen_server: false,
                    closed_client: false,
                    closed_server: false,
                })
                .collect(),
            by_stream: HashMap::new(),
            write_chunk: 64 * 1024,
            paused_readers: Vec::new(),
            errors: Vec::new(),
            targets_seen: Vec::new(),
        }
    }

    pub fn stream_of(&self, flow: usize) -> Option<StreamId> {
        self.flows[flow].stream
    }

    /// Bytes the server has received on `flow`.
    pub fn server_received(&self, flow: usize) -> u64 {
        self.flows[flow].server.received
    }

    /// Bytes the client has received on `flow`.
    pub fn client_received(&self, flow: usize) -> u64 {
        self.flows[flow].client.received
    }

    pub fn flow_done(&self, i: usize) -> bool {
        let f = &self.flows[i];
        if f.spec.reset.is_some() {
            return f.closed_client && f.closed_server;
        }
        f.client.fin_received && f.server.fin_received && f.closed_client && f.closed_server
    }

    pub fn all_done(&self) -> bool {
        (0..self.flows.len()).all(|i| self.flow_done(i))
    }

    /// One application step: handle events, open, write, read. Returns true when every flow
    /// is complete (or an error was recorded).
    pub fn step(&mut self, pair: &mut SimPair) -> bool {
        while let Some((side, ev)) = pair.events.pop_front() {
            self.on_event(side, ev);
        }
        for i in 0..self.flows.len() {
            let opener = self.flows[i].spec.opened_by;
            if self.flows[i].stream.is_none() {
                let target = self.flows[i].spec.target.clone();
                let opened = match opener {
                    Side::Client => pair.client.open_stream(target.as_deref()),
                    Side::Server => match pair.server_mut() {
                        Some(s) => s.open_stream(target.as_deref()),
                        None => continue,
                    },
                };
                match opened {
                    Ok(id) => {
                        self.flows[i].stream = Some(id);
                        self.by_stream.insert(id, i);
                    }
                    Err(_) => continue,
                }
            }
            let acceptor = match opener {
                Side::Client => Side::Server,
                Side::Server => Side::Client,
            };
            self.pump(pair, i, opener);
            if self.flows[i].server_seen {
                self.pump(pair, i, acceptor);
            }
        }
        !self.errors.is_empty() || self.all_done()
    }

    fn on_event(&mut self, side: Side, ev: Event) {
        match ev {
            Event::StreamOpened { stream, target } => {
                self.targets_seen.push(target);
                match self.by_stream.get(&stream) {
                    Some(&i) if self.flows[i].spec.opened_by != side => {
                        self.flows[i].server_seen = true
                    }
                    _ => self
                        .errors
                        .push(format!("{side:?} saw unknown stream {stream} opened")),
                }
            }
            Event::StreamReset { stream, .. } => {
                if let Some(&i) = self.by_stream.get(&stream) {
                    let f = &mut self.flows[i];
                    if f.spec.reset.is_none() {
                        self.errors.push(format!("unexpected reset of flow {i}"));
                    }
                    match side {
                        Side::Client => f.reset_seen_client = true,
                        Side::Server => f.reset_seen_server = true,
                    }
                }
            }
            Event::StreamClosed { stream, .. } => {
                if let Some(&i) = self.by_stream.get(&stream) {
                    match side {
                        Side::Client => self.flows[i].closed_client = true,
                        Side::Server => self.flows[i].closed_server = true,
                    }
                }
            }
            Event::SessionClosed { reason } => {
                self.errors
                    .push(format!("{side:?} session closed: {reason}"));
            }
            _ => {}
        }
    }

    fn pump(&mut self, pair: &mut SimPair, i: usize, side: Side) {
        let Some(id) = self.flows[i].stream else {
            return;
        };
        let f = &mut self.flows[i];
        let flow = i as u64;
        let (session, dir_out, dir_in) = match side {
            Side::Client => (&mut pair.client, 0u64, 1u64),
            Side::Server => match pair.server_mut() {
                Some(s) => (s, 1, 0),
                None => return,
            },
        };
        let opener = side == f.spec.opened_by;
        let (total, own_fin_received) = match side {
            Side::Client => (f.spec.up, f.client.fin_received),
            Side::Server => (f.spec.down, f.server.fin_received),
        };
        let peer_half_fin = opener || !f.spec.reply_after_eof || own_fin_received;
        let half = match side {
            Side::Client => &mut f.client,
            Side::Server => &mut f.server,
        };
        if f.reset_done && f.spec.reset.is_some_and(|(s, _)| s == side) {
            return;
        }
        // Write.
        if peer_half_fin && !half.fin_sent {
            while half.written < total {
                let limit = match f.spec.reset {
                    Some((s, at)) if s == side => at.min(total),
                    _ => total,
                };
                if half.written >= limit {
                    break;
                }
                let n = ((limit - half.written) as usize).min(self.write_chunk);
                let chunk = pattern_chunk(flow, dir_out, half.written, n);
                match session.write(id, chunk.clone()) {
                    Ok(0) => break,
                    Ok(k) => {
                        half.sent_hash.update(&chunk[..k]);
                        half.written += k as u64;
                    }
                    Err(_) => break,
                }
            }
            if let Some((s, at)) = f.spec.reset
                && s == side
                && half.written >= at.min(total)
                && !f.reset_done
            {
                let _ = session.reset(id, 42);
                f.reset_done = true;
                return;
            }
            if half.written == total
                && f.spec.reset.is_none_or(|(s, _)| s != side)
                && session.shutdown(id).is_ok()
            {
                half.fin_sent = true;
            }
        }
        // Read.
        if !opener && self.paused_readers.contains(&i) {
            return;
        }
        loop {
            match session.read(id, 256 * 1024) {
                Ok(ReadOutcome::Data(b)) => {
                    if let Some(off) = pattern::check(stream_seed(flow, dir_in), half.received, &b)
                    {
                        self.errors
                            .push(format!("flow {i} {side:?}: wrong byte at offset {off}"));
                        return;
                    }
                    half.recv_hash.update(&b);
                    half.received += b.len() as u64;
                }
                Ok(ReadOutcome::Fin) => {
                    half.fin_received = true;
                    break;
                }
                Ok(ReadOutcome::WouldBlock) | Err(_) => break,
            }
        }
    }

    /// After completion: every direction delivered exactly what was sent (SHA-256 equal, length
    /// equal), or an exact prefix for reset flows.
    pub fn verify(&self) -> Result<(), String> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        for (i, f) in self.flows.iter().enumerate() {
            if f.spec.reset.is_some() {
                if f.client.received > f.server.written || f.server.received > f.client.written {
                    return Err(format!("flow {i}: received more than was sent"));
                }
                continue;
            }
            for (name, tx, rx) in [("up", &f.client, &f.server), ("down", &f.server, &f.client)] {
                let want = if name == "up" { f.spec.up } else { f.spec.down };
                if rx.received != want || tx.written != want {
                    return Err(format!(
                        "flow {i} {name}: sent {} received {} of {want}",
                        tx.written, rx.received
                    ));
                }
                if tx.sent_hash.digest() != rx.recv_hash.digest() {
                    return Err(format!("flow {i} {name}: checksum mismatch"));
                }
                if !rx.fin_received {
                    return Err(format!("flow {i} {name}: no EOF"));
                }
            }
        }
        Ok(())
    }
}
