//! A simulated network for the protocol core: a virtual clock and N tunnels between one client
//! session and one server, each tunnel with its own one-way delay, bandwidth and send buffer,
//! delivering in order within a tunnel as TCP does. Tunnels can be stalled, killed (reset) or cut
//! (killed, and re-dials fail) at any time, and the server can be down. Fully deterministic for a
//! given seed.
//!
//! Owns: the virtual network and the server's connection handling in the simulation (handshake,
//! attaching tunnels to its one session). Must not touch: protocol logic — it only moves bytes and
//! calls the sans-IO API exactly as a driver would, which is what makes its tests meaningful.
//!
//! A tunnel's send buffer models the kernel socket buffer kept shallow with TCP_NOTSENT_LOWAT: the
//! session is only asked for bytes when there is room, so scheduling decisions are made late.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::Config;
use crate::handshake::{
    Admission, HELLO_FLAG_RESUME, HelloStatus, ServerHandshake, ServerProgress,
};
use crate::session::{Event, Session};

/// One direction of a simulated tunnel path.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bottleneck rate, bytes per second.
    pub rate: f64,
    /// Sender-side buffer (the kernel send queue), bytes.
    pub buffer: usize,
}

impl LinkSpec {
    /// A path with `delay_ms` one-way delay and `mbit` Mbit/s, with a send buffer of 1/4 of its
    /// bandwidth-delay product (at least 64 KiB), as TCP_NOTSENT_LOWAT would keep it.
    pub fn new(delay_ms: u64, mbit: f64) -> Self {
        let delay = Duration::from_millis(delay_ms);
        let rate = mbit * 1e6 / 8.0;
        let bdp = rate * 2.0 * delay.as_secs_f64();
        Self {
            delay,
            rate,
            buffer: ((bdp / 4.0) as usize).max(64 * 1024),
        }
    }
}

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client session.
    Client,
    /// The server session.
    Server,
}

#[derive(Debug)]
struct Dir {
    busy_until: Instant,
    serializing: VecDeque<(Instant, Bytes)>,
    serializing_bytes: usize,
    propagating: VecDeque<(Instant, Bytes)>,
    rx: BytesMut,
}

impl Dir {
    fn new(now: Instant) -> Self {
        Self {
            busy_until: now,
            serializing: VecDeque::new(),
            serializing_bytes: 0,
            propagating: VecDeque::new(),
            rx: BytesMut::new(),
        }
    }

    fn enqueue(&mut self, now: Instant, spec: &LinkSpec, chunk: Bytes) {
        let start = self.busy_until.max(now);
        let finish = start + Duration::from_secs_f64(chunk.len() as f64 / spec.rate);
        self.busy_until = finish;
        self.serializing_bytes += chunk.len();
        self.serializing.push_back((finish, chunk));
    }

    fn advance(&mut self, now: Instant, delay: Duration) {
        while let Some((finish, _)) = self.serializing.front() {
            if *finish > now {
                break;
            }
            let Some((finish, chunk)) = self.serializing.pop_front() else {
                break;
            };
            self.serializing_bytes -= chunk.len();
            self.propagating.push_back((finish + delay, chunk));
        }
    }
}

#[derive(Debug)]
enum Conn {
    None,
    Connecting {
        ready: Instant,
    },
    Failing {
        at: Instant,
    },
    Open {
        handshake: Option<Box<ServerHandshake>>,
        attached: bool,
    },
}

#[derive(Debug)]
struct Link {
    spec: LinkSpec,
    dirs: [Dir; 2],
    conn: Conn,
    stalled_until: Option<Instant>,
    cut: bool,
    /// Pending "connection closed" notices: (when, side to notify).
    closing: Vec<(Instant, Side)>,
}

/// A client session and a server over simulated tunnels.
#[derive(Debug)]
pub struct SimPair {
    /// The virtual clock.
    pub now: Instant,
    start: Instant,
    /// The client session.
    pub client: Session,
    /// The server session, once a tunnel has been accepted.
    pub server: Option<Session>,
    /// Events from both sessions, oldest first, for the test to drain.
    pub events: VecDeque<(Side, Event)>,
    /// Every event seen, for assertions after the run.
    pub log: Vec<(Side, Event)>,
    /// Errors the server's handshakes ended with.
    pub handshake_errors: Vec<crate::handshake::HandshakeError>,
    server_config: Arc<Config>,
    links: Vec<Link>,
    server_up: bool,
    seed: u64,
    server_sessions_made: u64,
    wakeups: Vec<Instant>,
    out: Vec<Bytes>,
    rng: StdRng,
}

impl SimPair {
    /// Builds a pair: one tunnel slot per entry of `links` (both directions alike). The client
    /// starts dialing at once.
    pub fn new(client: Config, server: Config, links: &[LinkSpec], seed: u64) -> Self {
        let now = Instant::now();
        let client_cfg = Arc::new(Config {
            pool_size: links.len() as u16,
            ..client
        });
        let session = Session::client(client_cfg, now, seed);
        let links = links
            .iter()
            .map(|spec| Link {
                spec: *spec,
                dirs: [Dir::new(now), Dir::new(now)],
                conn: Conn::None,
                stalled_until: None,
                cut: false,
                closing: Vec::new(),
            })
            .collect();
        Self {
            now,
            start: now,
            client: session,
            server: None,
            events: VecDeque::new(),
            log: Vec::new(),
            handshake_errors: Vec::new(),
            server_config: Arc::new(server),
            links,
            server_up: true,
            seed,
            server_sessions_made: 0,
            wakeups: Vec::new(),
            out: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        }
    }

    /// Time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Asks the loop to wake the application at `at`.
    pub fn wake_at(&mut self, at: Instant) {
        self.wakeups.push(at);
    }

    /// The server stops answering (connections to it fail) or comes back. Going down drops its
    /// session and every connection, as a restart would.
    pub fn set_server_up(&mut self, up: bool) {
        self.server_up = up;
        if !up {
            for t in 0..self.links.len() {
                self.kill(t);
            }
            self.server = None;
        }
    }

    /// Resets tunnel `t`'s connection (both ends see it fail now); re-dials succeed.
    pub fn kill(&mut self, t: usize) {
        let now = self.now;
        let link = &mut self.links[t];
        let was_open = matches!(link.conn, Conn::Open { .. } | Conn::Connecting { .. });
        let attached = matches!(link.conn, Conn::Open { attached: true, .. });
        link.conn = Conn::None;
        for d in &mut link.dirs {
            *d = Dir::new(now);
        }
        link.closing.clear();
        if was_open {
            self.client
                .tunnel_lost(now, t, "connection reset (simulated)");
            if attached && let Some(s) = self.server.as_mut() {
                s.tunnel_lost(now, t, "connection reset (simulated)");
            }
        }
        self.drain_events();
    }

    /// Kills tunnel `t` and makes its re-dials fail until [`SimPair::restore`].
    pub fn cut(&mut self, t: usize) {
        self.links[t].cut = true;
        self.kill(t);
    }

    /// Lets tunnel `t` be dialed again.
    pub fn restore(&mut self, t: usize) {
        self.links[t].cut = false;
    }

    /// Holds every byte on tunnel `t` until `until` (no error is seen: only timeouts notice).
    pub fn stall(&mut self, t: usize, until: Instant) {
        self.links[t].stalled_until = Some(until);
    }

    /// Runs until `done` returns true (`true`) or `limit` of virtual time passes (`false`).
    /// `done` is called after every step; it is where the test's application reads and writes.
    pub fn run(&mut self, limit: Duration, mut done: impl FnMut(&mut SimPair) -> bool) -> bool {
        let deadline = self.now + limit;
        loop {
            self.process_due();
            if done(self) {
                return true;
            }
            self.transmit_all();
            self.drain_events();
            match self.next_wakeup() {
                Some(t) if t <= deadline => self.now = self.now.max(t),
                _ => {
                    self.now = deadline;
                    self.process_due();
                    return done(self);
                }
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.client.poll_event() {
            self.on_event(Side::Client, ev);
        }
        while let Some(ev) = self.server.as_mut().and_then(Session::poll_event) {
            self.on_event(Side::Server, ev);
        }
    }

    fn on_event(&mut self, side: Side, ev: Event) {
        let now = self.now;
        match (&ev, side) {
            (Event::Dial { tunnel }, Side::Client) => {
                let t = *tunnel as usize;
                let rtt = self.links[t].spec.delay * 2;
                self.links[t].conn = if self.server_up && !self.links[t].cut {
                    Conn::Connecting { ready: now + rtt }
                } else {
                    Conn::Failing { at: now + rtt }
                };
            }
            (Event::TunnelDown { tunnel, .. }, _) => {
                let t = *tunnel as usize;
                let link = &mut self.links[t];
                if matches!(link.conn, Conn::Open { .. }) {
                    // The socket closes: the other end notices one delay later.
                    let attached = matches!(link.conn, Conn::Open { attached: true, .. });
                    link.conn = Conn::None;
                    for d in &mut link.dirs {
                        *d = Dir::new(now);
                    }
                    let other = match side {
                        Side::Client => Side::Server,
                        Side::Server => Side::Client,
                    };
                    if other == Side::Client || attached {
                        link.closing.push((now + link.spec.delay, other));
                    }
                }
            }
            _ => {}
        }
        self.log.push((side, ev.clone()));
        self.events.push_back((side, ev));
    }

    fn process_due(&mut self) {
        let now = self.now;
        for t in 0..self.links.len() {
            // Connection set-up and failure.
            match self.links[t].conn {
                Conn::Connecting { ready } if ready <= now => {
                    let hs = ServerHandshake::new(
                        &self.server_config.psk,
                        self.server_config.pool_size,
                        self.server_config.transport_params(),
                        self.server_config.handshake_timeout,
                        now,
                        &mut self.rng,
                    );
                    self.links[t].conn = Conn::Open {
                        handshake: Some(Box::new(hs)),
                        attached: false,
                    };
                    self.client.tunnel_connected(now, t);
                }
                Conn::Failing { at } if at <= now => {
                    self.links[t].conn = Conn::None;
                    self.client
                        .tunnel_dial_failed(now, t, "connection refused (simulated)");
                }
                _ => {}
            }
            // Deliveries.
            let stalled = self.links[t].stalled_until.is_some_and(|u| u > now);
            for d in 0..2 {
                let delay = self.links[t].spec.delay;
                self.links[t].dirs[d].advance(now, delay);
                if stalled {
                    continue;
                }
                let mut arrived = false;
                while let Some((at, _)) = self.links[t].dirs[d].propagating.front() {
                    if *at > now {
                        break;
                    }
                    let Some((_, chunk)) = self.links[t].dirs[d].propagating.pop_front() else {
                        break;
                    };
                    self.links[t].dirs[d].rx.extend_from_slice(&chunk);
                    arrived = true;
                }
                if arrived {
                    if d == 0 {
                        self.deliver_to_server(t);
                    } else {
                        let mut rx = std::mem::take(&mut self.links[t].dirs[1].rx);
                        let _ = self.client.handle_input(now, t, &mut rx);
                        self.links[t].dirs[1].rx = rx;
                    }
                }
            }
            let closing: Vec<_> = {
                let link = &mut self.links[t];
                let (due, later): (Vec<_>, Vec<_>) =
                    link.closing.drain(..).partition(|(at, _)| *at <= now);
                link.closing = later;
                due
            };
            for (_, side) in closing {
                match side {
                    Side::Client => self
                        .client
                        .tunnel_lost(now, t, "closed by peer (simulated)"),
                    Side::Server => {
                        if let Some(s) = self.server.as_mut() {
                            s.tunnel_lost(now, t, "closed by peer (simulated)");
                        }
                    }
                }
            }
            // Server handshake timeouts.
            if let Conn::Open {
                handshake: Some(hs),
                ..
            } = &mut self.links[t].conn
                && let Err(e) = hs.handle_timeout(now)
            {
                self.handshake_errors.push(e);
                self.close_from_server(t);
            }
        }
        if self.client.poll_timeout().is_some_and(|at| at <= now) {
            self.client.handle_timeout(now);
        }
        if let Some(s) = self.server.as_mut()
            && s.poll_timeout().is_some_and(|at| at <= now)
        {
            s.handle_timeout(now);
        }
        self.wakeups.retain(|w| *w > now);
        self.drain_events();
    }

    fn close_from_server(&mut self, t: usize) {
        let link = &mut self.links[t];
        link.conn = Conn::None;
        // The close follows whatever the server still had queued (a refusal, say), as TCP's FIN
        // follows the data before it.
        let after = link.dirs[1].busy_until.max(self.now) + link.spec.delay;
        link.closing.push((after, Side::Client));
    }

    fn deliver_to_server(&mut self, t: usize) {
        let now = self.now;
        let mut rx = std::mem::take(&mut self.links[t].dirs[0].rx);
        if let Conn::Open {
            handshake: Some(hs),
            ..
        } = &mut self.links[t].conn
        {
            let existing = self.server.as_ref().map(|s| *s.id());
            let result = hs.handle_input(now, &mut rx, |hello| match existing {
                Some(id) if id == hello.session_id => Admission::Admit,
                Some(_) => Admission::Refuse(HelloStatus::TooManySessions),
                None if hello.flags & HELLO_FLAG_RESUME != 0 => {
                    Admission::Refuse(HelloStatus::UnknownSession)
                }
                None => Admission::Admit,
            });
            let output = hs.take_output();
            if !output.is_empty() {
                let spec = self.links[t].spec;
                self.links[t].dirs[1].enqueue(now, &spec, output.freeze());
            }
            match result {
                Ok(ServerProgress::Pending) => {}
                Ok(ServerProgress::Accepted(acc)) => {
                    self.links[t].conn = Conn::Open {
                        handshake: None,
                        attached: true,
                    };
                    match self.server.as_mut() {
                        Some(s) => s.attach_tunnel(now, &acc),
                        None => {
                            self.server_sessions_made += 1;
                            let seed = self.seed.wrapping_add(self.server_sessions_made);
                            self.server =
                                Some(Session::server(self.server_config.clone(), now, &acc, seed));
                        }
                    }
                }
                Err(e) => {
                    self.handshake_errors.push(e);
                    rx.clear();
                    self.close_from_server(t);
                }
            }
        }
        if matches!(
            self.links[t].conn,
            Conn::Open {
                handshake: None,
                attached: true
            }
        ) && !rx.is_empty()
            && let Some(s) = self.server.as_mut()
        {
            let _ = s.handle_input(now, t, &mut rx);
        }
        self.links[t].dirs[0].rx = rx;
    }

    fn transmit_all(&mut self) {
        let now = self.now;
        for t in 0..self.links.len() {
            let Conn::Open { attached, .. } = self.links[t].conn else {
                continue;
            };
            let spec = self.links[t].spec;
            let room = spec
                .buffer
                .saturating_sub(self.links[t].dirs[0].serializing_bytes);
            if room > 0 {
                self.out.clear();
                self.client.poll_transmit(now, t, room, &mut self.out);
                for chunk in self.out.drain(..) {
                    self.links[t].dirs[0].enqueue(now, &spec, chunk);
                }
            }
            if attached && let Some(s) = self.server.as_mut() {
                let room = spec
                    .buffer
                    .saturating_sub(self.links[t].dirs[1].serializing_bytes);
                if room > 0 {
                    self.out.clear();
                    s.poll_transmit(now, t, room, &mut self.out);
                    for chunk in self.out.drain(..) {
                        self.links[t].dirs[1].enqueue(now, &spec, chunk);
                    }
                }
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            let t = t.max(self.now);
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        for link in &self.links {
            match link.conn {
                Conn::Connecting { ready } => consider(ready),
                Conn::Failing { at } => consider(at),
                Conn::Open {
                    handshake: Some(ref hs),
                    ..
                } => consider(hs.deadline()),
                _ => {}
            }
            for (at, _) in &link.closing {
                consider(*at);
            }
            for d in &link.dirs {
                if let Some((finish, _)) = d.serializing.front() {
                    consider(*finish);
                }
                if let Some((arrive, _)) = d.propagating.front() {
                    consider(match link.stalled_until {
                        Some(until) if until > *arrive => until,
                        _ => *arrive,
                    });
                }
            }
        }
        if let Some(t) = self.client.poll_timeout() {
            consider(t);
        }
        if let Some(t) = self.server.as_ref().and_then(Session::poll_timeout) {
            consider(t);
        }
        for w in &self.wakeups {
            consider(*w);
        }
        next
    }
}
