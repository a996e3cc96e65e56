//! The client runtime's side of reverse tunnels, against a hand-driven server: the test plays
//! the server with the sans-IO [`Endpoint`] over one plaintext TCP tunnel, so it can open
//! streams for any name. The client announces what it exposes (EXPOSE), connects a stream for
//! an exposed name to its target, and resets (code 5) a stream for any other name without
//! connecting anything. On both I/O drivers, under a watchdog, every wait bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mtcpd_engine::endpoint::{Endpoint, HandshakeOutcome, SessionBudget, SessionKey};
use mtcpd_engine::handshake::PLAINTEXT_BINDING;
use mtcpd_engine::runtime::{self, ExposedService, IoChoice, RuntimeOptions};
use mtcpd_engine::session::{Event, ReadOutcome, Session, StreamId};
use mtcpd_engine::{Config, StreamError};
use mtcpd_testkit::{Driver, driver_tests};

const KEY: &[u8] = b"reverse-runtime-test-key, 32 bytes or more";
const LIMIT: Duration = Duration::from_secs(20);

fn choice(driver: Driver) -> IoChoice {
    driver.name().parse().expect("a driver name")
}

fn config() -> Config {
    Config {
        psk: KEY.to_vec(),
        pool_size: 1,
        ..Config::default()
    }
}

/// One tunnel, server side: the socket and the endpoint's session on it.
struct FakeServer {
    sock: TcpStream,
    endpoint: Endpoint,
    session: SessionKey,
    rx: BytesMut,
    events: Vec<Event>,
}

impl FakeServer {
    /// Accepts the client's tunnel on `listener` and completes the handshake.
    fn accept(listener: &TcpListener) -> FakeServer {
        let (mut sock, _) = listener.accept().expect("the client dials");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut endpoint = Endpoint::server(Arc::new(config()), SessionBudget::new(1), [7; 32]);
        let key = endpoint
            .accept_connection(Instant::now())
            .expect("a server endpoint");
        let mut rx = BytesMut::new();
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(Instant::now() < deadline, "no ClientHello");
            read_some(&mut sock, &mut rx);
            let step = endpoint.handshake_input(Instant::now(), key, &mut rx, &PLAINTEXT_BINDING);
            sock.write_all(&step.output).unwrap();
            match step.outcome {
                HandshakeOutcome::Pending => continue,
                HandshakeOutcome::Attached { session, .. } => {
                    return FakeServer {
                        sock,
                        endpoint,
                        session,
                        rx,
                        events: Vec::new(),
                    };
                }
                HandshakeOutcome::Failed(e) => panic!("handshake failed: {e}"),
            }
        }
    }

    fn session(&mut self) -> &mut Session {
        self.endpoint
            .get_mut(self.session)
            .expect("the session")
            .session_mut()
    }

    /// One round: input, timers, output, events.
    fn pump(&mut self) {
        let now = Instant::now();
        read_some(&mut self.sock, &mut self.rx);
        let mut rx = std::mem::take(&mut self.rx);
        let _ = self.session().handle_input(now, 0, &mut rx);
        self.rx = rx;
        if self.session().poll_timeout().is_some_and(|at| at <= now) {
            self.session().handle_timeout(now);
        }
        let mut out: Vec<Bytes> = Vec::new();
        self.session().poll_transmit(now, 0, 1 << 20, &mut out);
        for chunk in out {
            self.sock.write_all(&chunk).unwrap();
        }
        while let Some(ev) = self.session().poll_event() {
            self.events.push(ev);
        }
    }

    /// Pumps until `done` says so (panics after [`LIMIT`]).
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut FakeServer) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.events
            );
            self.pump();
        }
    }
}

fn read_some(sock: &mut TcpStream, rx: &mut BytesMut) {
    let mut buf = [0u8; 65536];
    match sock.read(&mut buf) {
        Ok(n) => rx.extend_from_slice(&buf[..n]),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) => {}
        Err(e) => panic!("tunnel read: {e}"),
    }
}

/// An echo service that counts its connections.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || mtcpd_testkit::backends::echo(conn));
        }
    });
    (addr, count)
}

fn client_refuses_what_it_does_not_expose(io: IoChoice) {
    let (service, connections) = counting_echo();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = RuntimeOptions {
        io,
        drain_timeout: Duration::from_secs(1),
        ..RuntimeOptions::default()
    };
    opts.engine = config();
    opts.tls.insecure_plaintext = true;
    opts.tunnel_sockets.congestion = None;
    let exposed = [ExposedService {
        name: "web".into(),
        target: service,
    }];
    let client =
        runtime::spawn_exposing_client(opts, listener.local_addr().unwrap(), &[], &exposed)
            .expect("client starts");
    let mut server = FakeServer::accept(&listener);
    server.until("the client's EXPOSE", |s| {
        s.events.contains(&Event::PeerExposed {
            names: vec!["web".into()],
        })
    });
    // A name the client does not expose: reset with code 5, nothing connected.
    let db = server.session().open_stream(Some("db")).unwrap();
    server.until("the reset of the unexposed stream", |s| {
        s.events.contains(&Event::StreamReset {
            stream: db,
            code: 5,
        })
    });
    // No name at all: the same.
    let unnamed = server.session().open_stream(None).unwrap();
    server.until("the reset of the unnamed stream", |s| {
        s.events.contains(&Event::StreamReset {
            stream: unnamed,
            code: 5,
        })
    });
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing was connected"
    );
    // The exposed name reaches its target, both ways.
    let web: StreamId = server.session().open_stream(Some("web")).unwrap();
    server
        .session()
        .write(web, Bytes::from_static(b"hello, reverse"))
        .unwrap();
    server.session().shutdown(web).unwrap();
    let mut echoed = Vec::new();
    server.until("the echo", |s| {
        loop {
            match s.session().read(web, 1 << 16) {
                Ok(ReadOutcome::Data(b)) => echoed.extend_from_slice(&b),
                Ok(ReadOutcome::Fin) => return true,
                Ok(ReadOutcome::WouldBlock) | Err(StreamError::UnknownStream(_)) => return false,
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    assert_eq!(echoed, b"hello, reverse");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    client.shutdown();
    client.join();
}

driver_tests! {
    #[within(60)]
    fn the_client_connects_only_names_it_exposes(io) {
        client_refuses_what_it_does_not_expose(choice(io));
    }
}

fn reverse_connections_hold_a_place_in_the_connection_budget(io: IoChoice) {
    let (service, _) = counting_echo();
    let opts = |max_backend_connections| {
        let mut o = RuntimeOptions {
            io,
            drain_timeout: Duration::from_secs(1),
            max_backend_connections,
            workers: 2,
            ..RuntimeOptions::default()
        };
        o.engine = config();
        o.tls.insecure_plaintext = true;
        o.tunnel_sockets.congestion = None;
        o
    };
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let public_addr = public.local_addr().unwrap();
    drop(public);
    let reverse = [runtime::ReverseListener {
        name: "web".into(),
        listen: public_addr,
        when_absent: runtime::WhenAbsent::Close,
    }];
    let refuse: runtime::TargetResolver = Arc::new(|_| runtime::Route::Refuse);
    let server =
        runtime::spawn_reverse_server(opts(1), "127.0.0.1:0".parse().unwrap(), refuse, &reverse)
            .expect("server starts");
    let tunnel = server.local_addrs()[0];
    let exposed = [ExposedService {
        name: "web".into(),
        target: service,
    }];
    let client =
        runtime::spawn_exposing_client(opts(8192), tunnel, &[], &exposed).expect("client starts");
    let deadline = Instant::now() + LIMIT;
    let mut first = loop {
        assert!(
            Instant::now() < deadline,
            "the reverse listener never opened"
        );
        if let Ok(s) = TcpStream::connect(public_addr) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    first.set_read_timeout(Some(LIMIT)).unwrap();
    let echo = |s: &mut TcpStream| -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping")?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back)?;
        Ok(back.to_vec())
    };
    assert_eq!(echo(&mut first).unwrap(), b"ping");
    // The budget (1) is spent while the first is open: the second is reset, not carried.
    let mut second = TcpStream::connect(public_addr).unwrap();
    second.set_read_timeout(Some(LIMIT)).unwrap();
    assert!(
        echo(&mut second).is_err(),
        "a connection beyond the budget was carried"
    );
    // Once the first closes, its place is free again.
    drop(first);
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the budget's place never came back"
        );
        let mut again = TcpStream::connect(public_addr).unwrap();
        again.set_read_timeout(Some(LIMIT)).unwrap();
        if echo(&mut again).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

driver_tests! {
    #[within(60)]
    fn reverse_connections_are_bounded_by_the_connection_budget(io) {
        reverse_connections_hold_a_place_in_the_connection_budget(choice(io));
    }
}
