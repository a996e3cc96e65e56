//! A simulated network for the protocol core: a virtual clock and N tunnels between one client
//! session and one server, each tunnel with its own one-way delay, bandwidth and send buffer,
//! delivering in order within a tunnel as TCP does. Tunnels can be stalled, killed (reset) or cut
//! (killed, and re-dials fail) at any time, and the server can be down. Fully deterministic for a
//! given seed.
//!
//! Owns: the virtual network. Must not touch: protocol logic — it only moves bytes and calls the
//! sans-IO API exactly as a driver would, which is what makes its tests meaningful. The server
//! side is a real [`Endpoint`]: handshakes, admission against `max_sessions` (1 unless
//! [`SimPair::with_max_sessions`] says otherwise), create-or-attach and resume refusal are the
//! daemon's own.
//!
//! A tunnel's send buffer models the kernel socket buffer kept shallow with TCP_NOTSENT_LOWAT: the
//! session is only asked for bytes when there is room, so scheduling decisions are made late.
//!
//! By default each tunnel is its own fixed-rate pipe that never loses a byte. With
//! [`SimPair::with_bottleneck`] the tunnels of each direction instead share one drop-tail queue
//! with random loss, and each tunnel behaves as a TCP flow behind it ([`bottleneck`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::config::Config;
use crate::endpoint::{
    ClientRefused, Endpoint, HandshakeKey, HandshakeOutcome, Reaped, RefusalBackoff, SessionBudget,
    SessionKey,
};
use crate::tls::{TlsError, TlsSetup, TunnelTls};

pub mod bottleneck;
mod records;
use crate::session::{Event, Session};
use bottleneck::{Shared, TcpDir};
use records::sim_tls;

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
    /// Bytes arrived, not yet through the receiving end's record layer.
    rx: BytesMut,
    /// Plaintext from the record layer, not yet consumed by the receiving end.
    plain: BytesMut,
    /// Behind a shared bottleneck: the tunnel's TCP model, which then holds the unsent bytes
    /// (`serializing_bytes` counts them) and fills `propagating` with what its receiver may read.
    tcp: Option<TcpDir>,
}

impl Dir {
    fn new(now: Instant) -> Self {
        Self {
            busy_until: now,
            serializing: VecDeque::new(),
            serializing_bytes: 0,
            propagating: VecDeque::new(),
            rx: BytesMut::new(),
            plain: BytesMut::new(),
            tcp: None,
        }
    }

    /// A fresh direction (a new connection), behind the bottleneck when this one was.
    fn reset(&mut self, now: Instant, mss: Option<usize>) {
        *self = Dir::new(now);
        self.tcp = mss.map(TcpDir::new);
    }

    fn enqueue(&mut self, now: Instant, spec: &LinkSpec, chunk: Bytes) {
        if let Some(tcp) = &mut self.tcp {
            self.serializing_bytes += chunk.len();
            tcp.push(chunk);
            return;
        }
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
        /// The server's handshake on this connection, until it finishes.
        handshake: Option<HandshakeKey>,
        /// The server session the tunnel joined.
        attached: Option<SessionKey>,
    },
}

/// Which end a "connection closed" notice goes to.
#[derive(Debug, Clone, Copy)]
enum Notify {
    Client,
    Server(SessionKey),
}

#[derive(Debug)]
struct Link {
    spec: LinkSpec,
    dirs: [Dir; 2],
    conn: Conn,
    stalled_until: Option<Instant>,
    cut: bool,
    /// Pending "connection closed" notices: (when, end to notify).
    closing: Vec<(Instant, Notify)>,
    /// The record layers of the open connection: client end, server end.
    tls: Option<[TunnelTls; 2]>,
}

/// A client session and a server over simulated tunnels.
#[derive(Debug)]
pub struct SimPair {
    /// The virtual clock.
    pub now: Instant,
    start: Instant,
    /// The client session.
    pub client: Session,
    /// The server: its sessions, handshakes and admission.
    pub server: Endpoint,
    /// Events from both sessions, oldest first, for the test to drain.
    pub events: VecDeque<(Side, Event)>,
    /// Every event seen, for assertions after the run.
    pub log: Vec<(Side, Event)>,
    /// Errors the server's handshakes ended with.
    pub handshake_errors: Vec<crate::handshake::HandshakeError>,
    /// With [`SimPair::restart_closed_client`]: every permanent refusal, in order.
    pub refusals: Vec<ClientRefused>,
    /// Tunnels dropped because a record failed (tunnel, error), in order.
    pub tls_errors: Vec<(usize, TlsError)>,
    /// TLS on every link (client setup, server setup), or `None` for plaintext.
    tls: Option<(TlsSetup, TlsSetup)>,
    /// Records each TLS key may protect, below its suite's limit ([`SimPair::record_limit`]).
    record_limit: Option<u64>,
    /// With [`SimPair::restart_closed_client`]: the client's refusal memory across sessions.
    restarts: Option<RefusalBackoff>,
    server_config: Arc<Config>,
    max_sessions: usize,
    client_config: Arc<Config>,
    links: Vec<Link>,
    server_up: bool,
    wakeups: Vec<Instant>,
    out: Vec<Bytes>,
    rng: StdRng,
    /// The shared bottleneck of each direction (client→server, server→client), if any.
    bottleneck: Option<[Shared; 2]>,
}

impl SimPair {
    /// Builds a pair: one tunnel slot per entry of `links` (both directions alike). The client
    /// starts dialing at once.
    pub fn new(client: Config, server: Config, links: &[LinkSpec], seed: u64) -> Self {
        Self::with_max_sessions(client, server, links, seed, 1)
    }

    /// [`SimPair::new`] with a server that admits up to `max_sessions` sessions.
    pub fn with_max_sessions(
        client: Config,
        server: Config,
        links: &[LinkSpec],
        seed: u64,
        max_sessions: usize,
    ) -> Self {
        let now = Instant::now();
        let client_cfg = Arc::new(Config {
            pool_size: links.len() as u16,
            ..client
        });
        let session = Session::client(client_cfg.clone(), now, seed);
        let server_config = Arc::new(server);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let endpoint = server_endpoint(&server_config, max_sessions, &mut rng);
        let links = links
            .iter()
            .map(|spec| Link {
                spec: *spec,
                dirs: [Dir::new(now), Dir::new(now)],
                conn: Conn::None,
                stalled_until: None,
                cut: false,
                closing: Vec::new(),
                tls: None,
            })
            .collect();
        Self {
            now,
            start: now,
            client: session,
            server: endpoint,
            events: VecDeque::new(),
            log: Vec::new(),
            handshake_errors: Vec::new(),
            refusals: Vec::new(),
            tls_errors: Vec::new(),
            tls: Some(sim_tls()),
            record_limit: None,
            restarts: None,
            server_config,
            max_sessions,
            client_config: client_cfg,
            links,
            server_up: true,
            wakeups: Vec::new(),
            out: Vec::new(),
            rng,
            bottleneck: None,
        }
    }

    /// Plaintext links (`insecure_plaintext` on both ends): call before the first run.
    pub fn plaintext(mut self) -> Self {
        self.tls = None;
        self
    }

    /// The server's session for the current client, once a tunnel has been accepted.
    pub fn server(&self) -> Option<&Session> {
        let key = self.server.find(self.client.id())?;
        self.server.get(key).map(|s| s.session())
    }

    /// [`SimPair::server`], to drive it.
    pub fn server_mut(&mut self) -> Option<&mut Session> {
        let key = self.server.find(self.client.id())?;
        self.server.get_mut(key).map(|s| s.session_mut())
    }

    /// The client process restarts: its tunnels reset and a fresh client session (a new
    /// session id, `seed`) dials the same links. The server keeps the old session until it
    /// times out.
    pub fn restart_client(&mut self, seed: u64) {
        for t in 0..self.links.len() {
            self.kill(t);
        }
        self.client = Session::client(self.client_config.clone(), self.now, seed);
        self.drain_events();
    }

    /// From now on a client session that closes is replaced, as a client endpoint replaces it
    /// ([`Endpoint::reap`]): at once, or after a permanent refusal when the same
    /// [`RefusalBackoff`] says so (each refusal is kept in [`SimPair::refusals`]).
    pub fn restart_closed_client(&mut self) {
        self.restarts = Some(RefusalBackoff::default());
    }

    /// A closed client is replaced (with [`SimPair::restart_closed_client`]).
    fn replace_closed_client(&mut self) -> bool {
        let Some(restarts) = &mut self.restarts else {
            return false;
        };
        if !self.client.is_closed() {
            return false;
        }
        let (first_dial, refused) =
            restarts.on_session_closed(self.now, &self.client, &self.client_config, &mut self.rng);
        self.refusals.extend(refused);
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        self.client =
            Session::client_dialing_at(self.client_config.clone(), self.now, seed, first_dial);
        true
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
            self.server = server_endpoint(&self.server_config, self.max_sessions, &mut self.rng);
        }
    }

    /// Resets tunnel `t`'s connection (both ends see it fail now); re-dials succeed.
    pub fn kill(&mut self, t: usize) {
        let now = self.now;
        let mss = self.bottleneck.as_ref().map(|b| b[0].spec.mss);
        let link = &mut self.links[t];
        let was_open = matches!(link.conn, Conn::Open { .. } | Conn::Connecting { .. });
        let attached = match link.conn {
            Conn::Open { attached, .. } => attached,
            _ => None,
        };
        if let Conn::Open {
            handshake: Some(key),
            ..
        } = link.conn
        {
            self.server.abandon_handshake(key);
        }
        link.conn = Conn::None;
        link.tls = None;
        for d in &mut link.dirs {
            d.reset(now, mss);
        }
        link.closing.clear();
        if was_open {
            self.client
                .tunnel_lost(now, t, "connection reset (simulated)");
            if let Some(s) = attached.and_then(|k| self.server.get_mut(k)) {
                s.session_mut()
                    .tunnel_lost(now, t, "connection reset (simulated)");
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
        loop {
            while let Some(ev) = self.client.poll_event() {
                self.on_event(Notify::Client, ev);
            }
            if !self.replace_closed_client() {
                break;
            }
        }
        for key in self.server.keys() {
            while let Some(ev) = self
                .server
                .get_mut(key)
                .and_then(|s| s.session_mut().poll_event())
            {
                self.on_event(Notify::Server(key), ev);
            }
            self.reap_server_session(key);
        }
    }

    /// As the daemon does once a server session has closed: the endpoint removes it (giving its
    /// place back) and every connection still attached to it closes.
    fn reap_server_session(&mut self, key: SessionKey) {
        if self.server.reap(self.now, key) == Reaped::Open {
            return;
        }
        for t in 0..self.links.len() {
            // Close notices for the removed session must not reach one that reuses its key.
            self.links[t]
                .closing
                .retain(|(_, to)| !matches!(to, Notify::Server(k) if *k == key));
            if matches!(self.links[t].conn, Conn::Open { attached: Some(k), .. } if k == key) {
                self.close_from_server(t);
            }
        }
    }

    fn on_event(&mut self, from: Notify, ev: Event) {
        let now = self.now;
        let side = match from {
            Notify::Client => Side::Client,
            Notify::Server(_) => Side::Server,
        };
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
                let mss = self.bottleneck.as_ref().map(|b| b[0].spec.mss);
                let link = &mut self.links[t];
                let (attached, handshake) = match link.conn {
                    Conn::Open {
                        attached,
                        handshake,
                    } => (attached, handshake),
                    _ => (None, None),
                };
                // A server session only closes the connection its own tunnel runs on.
                let owns = match from {
                    Notify::Client => matches!(link.conn, Conn::Open { .. }),
                    Notify::Server(key) => attached == Some(key),
                };
                if owns {
                    // The socket closes: the other end notices one delay later.
                    link.conn = Conn::None;
                    for d in &mut link.dirs {
                        d.reset(now, mss);
                    }
                    if let Some(key) = handshake {
                        self.server.abandon_handshake(key);
                    }
                    let other = match from {
                        Notify::Client => attached.map(Notify::Server),
                        Notify::Server(_) => Some(Notify::Client),
                    };
                    if let Some(other) = other {
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
        self.step_bottleneck();
        let now = self.now;
        for t in 0..self.links.len() {
            // Connection set-up and failure.
            match self.links[t].conn {
                Conn::Connecting { ready } if ready <= now => {
                    self.links[t].conn = Conn::Open {
                        handshake: self.server.accept_connection(now),
                        attached: None,
                    };
                    self.open_tls(t);
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
                        self.deliver_to_client(t);
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
            for (_, notify) in closing {
                match notify {
                    Notify::Client => self
                        .client
                        .tunnel_lost(now, t, "closed by peer (simulated)"),
                    Notify::Server(key) => {
                        if let Some(s) = self.server.get_mut(key) {
                            s.session_mut()
                                .tunnel_lost(now, t, "closed by peer (simulated)");
                        }
                    }
                }
            }
        }
        // Server handshake timeouts.
        for key in self.server.handshake_timeout(now) {
            let on_link = self
                .links
                .iter()
                .position(|l| matches!(l.conn, Conn::Open { handshake: Some(k), .. } if k == key));
            if let Some(t) = on_link {
                self.handshake_errors
                    .push(crate::handshake::HandshakeError::Timeout);
                self.close_from_server(t);
            }
        }
        if self.client.poll_timeout().is_some_and(|at| at <= now) {
            self.client.handle_timeout(now);
        }
        for (_, slot) in self.server.iter_mut() {
            let s = slot.session_mut();
            if s.poll_timeout().is_some_and(|at| at <= now) {
                s.handle_timeout(now);
            }
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
        link.closing.push((after, Notify::Client));
    }

    fn deliver_to_server(&mut self, t: usize) {
        let now = self.now;
        if !self.unseal(t, 1) {
            return;
        }
        let Some(&binding) = self.links[t].tls.as_ref().and_then(|p| p[1].binding()) else {
            return;
        };
        let mut rx = std::mem::take(&mut self.links[t].dirs[0].plain);
        if let Conn::Open {
            handshake: Some(key),
            ..
        } = self.links[t].conn
        {
            let step = self.server.handshake_input(now, key, &mut rx, &binding);
            if !step.output.is_empty() {
                self.seal(t, 1, vec![step.output.freeze()]);
            }
            match step.outcome {
                HandshakeOutcome::Pending => {}
                HandshakeOutcome::Attached { session, .. } => {
                    self.links[t].conn = Conn::Open {
                        handshake: None,
                        attached: Some(session),
                    };
                }
                HandshakeOutcome::Failed(e) => {
                    self.handshake_errors.push(e);
                    rx.clear();
                    self.close_from_server(t);
                }
            }
        }
        if let Conn::Open {
            handshake: None,
            attached: Some(key),
        } = self.links[t].conn
            && !rx.is_empty()
            && let Some(s) = self.server.get_mut(key)
        {
            let _ = s.session_mut().handle_input(now, t, &mut rx);
        }
        self.links[t].dirs[0].plain = rx;
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
            let connected = self.links[t]
                .tls
                .as_ref()
                .is_some_and(|pair| !pair[0].is_handshaking());
            if room > 0 && connected {
                let mut out = std::mem::take(&mut self.out);
                self.client.poll_transmit(now, t, room, &mut out);
                self.seal(t, 0, out);
            }
            if let Some(s) = attached.and_then(|k| self.server.get_mut(k)) {
                let s = s.session_mut();
                let room = spec
                    .buffer
                    .saturating_sub(self.links[t].dirs[1].serializing_bytes);
                if room > 0 {
                    let mut out = std::mem::take(&mut self.out);
                    s.poll_transmit(now, t, room, &mut out);
                    self.seal(t, 1, out);
                }
            }
        }
        // What the sessions just wrote goes out now, as far as the windows allow.
        self.step_bottleneck();
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
                _ => {}
            }
            for (at, _) in &link.closing {
                consider(*at);
            }
            for d in &link.dirs {
                if let Some(at) = d.tcp.as_ref().and_then(TcpDir::next_event) {
                    consider(at);
                }
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
        for (_, slot) in self.server.iter() {
            if let Some(t) = slot.session().poll_timeout() {
                consider(t);
            }
        }
        if let Some(t) = self.server.poll_handshake_timeout() {
            consider(t);
        }
        for w in &self.wakeups {
            consider(*w);
        }
        next
    }
}

/// The simulated server's endpoint: admission against `max_sessions`, seeds from `rng`.
fn server_endpoint(config: &Arc<Config>, max_sessions: usize, rng: &mut StdRng) -> Endpoint {
    let mut seed = [0; 32];
    rng.fill_bytes(&mut seed);
    Endpoint::server(config.clone(), SessionBudget::new(max_sessions), seed)
}
