//! What an operator sees and can rely on, through the real `mtcpd` binary on loopback, on both
//! I/O drivers: a port already in use stops the start with a clear message; a server outage is a
//! few log lines, not a flood, and the whole pool is back within one backoff step of the first
//! tunnel that gets through; application connections wait for a tunnel at most `connect_wait`
//! and one the application closed is never sent; an unlisted target is refused and the client
//! says so; pool sizes that differ are one line; normal stops are not warnings.
//!
//! A server outage is made by a relay between the client and the server that this test stops
//! (connections refused, relayed ones cut) and restarts on the same port, so the server keeps
//! the session as it would behind a broken network.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::driver_tests;
use mtcpd_testkit::ports::{listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;

const KEY: &str = "operations-test-key-0123456789abcdef-0123";

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// The daemon's log records (one per line) at INFO or above.
fn records(daemon: &Daemon) -> Vec<String> {
    daemon
        .log()
        .lines()
        .filter(|l| l.starts_with("20") && !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .map(str::to_owned)
        .collect()
}

fn server_config(port: u16, backend: SocketAddr, pool: u16, extra: &str) -> String {
    format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {port}\n\
         backend_ip = \"127.0.0.1\"\nbackend_port = {}\nconnection_pool_size = {pool}\n{extra}",
        backend.port()
    )
}

fn client_config(app: u16, server: u16, pool: u16, extra: &str) -> String {
    format!(
        "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\n\
         local_listen_port = {app}\nserver_ip = \"127.0.0.1\"\nserver_port = {server}\n\
         connection_pool_size = {pool}\n{extra}"
    )
}

fn wait_listening(addr: SocketAddr, daemon: &Daemon) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}; log:\n{}",
        daemon.log()
    );
}

/// An echo backend that counts the connections it accepted.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("backend");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                mtcpd_testkit::backends::echo(conn);
            });
        }
    });
    (addr, seen)
}

/// A TCP relay on `port` to `to`, which can be taken down (connections refused, relayed ones
/// cut) and brought back on the same port.
struct Relay {
    port: u16,
    to: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, to: SocketAddr) -> Relay {
        let mut relay = Relay {
            port,
            to,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            accept: None,
        };
        relay.resume();
        relay
    }

    fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, to) = (self.up.clone(), self.conns.clone(), self.to);
        self.accept = Some(thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((inbound, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = TcpStream::connect(to) else {
                    continue;
                };
                let mut list = conns.lock().expect("relay list");
                for (from, into) in [(&inbound, &outbound), (&outbound, &inbound)] {
                    let (mut from, mut into) =
                        (from.try_clone().unwrap(), into.try_clone().unwrap());
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
                list.push(inbound);
                list.push(outbound);
            }
        }));
    }

    /// Connections to the port are refused and the relayed ones cut, until [`Relay::resume`].
    fn pause(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().expect("relay list").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.pause();
    }
}

/// One request through `app`: the echo answers what was sent.
fn echo_once(app: SocketAddr) {
    let mut s = TcpStream::connect(app).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
}

/// The log's timestamp of `line` (RFC 3339, from the start of the line), in seconds of the day.
fn seconds_of(line: &str) -> f64 {
    let time = &line[11..line.find('Z').expect("timestamp")];
    let mut parts = time.split(':');
    let h: f64 = parts.next().and_then(|p| p.parse().ok()).expect("hour");
    let m: f64 = parts.next().and_then(|p| p.parse().ok()).expect("minute");
    let s: f64 = parts.next().and_then(|p| p.parse().ok()).expect("second");
    h * 3600.0 + m * 60.0 + s
}

/// Reads until the peer closes or resets; true when that happened within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    match s.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    }
}

driver_tests! {
    #[within(60)]
    fn a_port_already_in_use_stops_the_start_with_a_clear_message(io) {
        let dir = TempDir::new("ops");
        let lease = reserve_port();
        let port = lease.port();
        let (backend, _) = counting_echo();
        // Anything else: a plain listener.
        let other = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let mut server = Daemon::start(MTCPD, &dir, "s1", "server", &server_config(port, backend, 4, ""), io);
        let status = server.process.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert!(!status.success(), "{io}: {}", server.log());
        let message = format!("port {port} is already in use");
        assert!(server.log().contains(&message), "{io}: {}", server.log());
        assert_eq!(server.log().matches("Address already in use").count(), 0, "{}", server.log());
        drop(other);
        // Another mtcpd (two workers, so SO_REUSEPORT is on): the second one refuses to start.
        let config = format!("cores = 2\n{}", server_config(port, backend, 4, ""));
        let first = Daemon::start(MTCPD, &dir, "s2", "server", &config, io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &first);
        let mut second = Daemon::start(MTCPD, &dir, "s3", "server", &config, io);
        let status = second.process.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert!(!status.success(), "{io}: {}", second.log());
        assert!(second.log().contains(&message), "{io}: {}", second.log());
        // A client's forward on a port in use, too.
        let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy_port = busy.local_addr().expect("addr").port();
        let mut client = Daemon::start(MTCPD, &dir, "c", "client", &client_config(busy_port, port, 2, ""), io);
        let status = client.process.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert!(!status.success(), "{io}: {}", client.log());
        assert!(client.log().contains(&format!("port {busy_port} is already in use")), "{}", client.log());
    }

    #[within(90)]
    fn a_twenty_second_outage_is_a_few_lines_and_the_whole_pool_returns_at_once(io) {
        let dir = TempDir::new("ops");
        let (server_lease, relay_lease, app_lease) = (reserve_port(), reserve_port(), reserve_port());
        let (backend, _) = counting_echo();
        let server = Daemon::start(MTCPD, &dir, "server", "server",
            &server_config(server_lease.port(), backend, 8, ""), io);
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_lease.port()));
        wait_listening(server_addr, &server);
        let mut relay = Relay::start(relay_lease.port(), server_addr);
        // Default backoff (100 ms doubling to 10 s): what a deployment runs.
        let client = Daemon::start(MTCPD, &dir, "client", "client",
            &client_config(app_lease.port(), relay_lease.port(), 4, ""), io);
        assert!(client.wait_for_log_count("tunnel established", 4, Duration::from_secs(10)), "{}", client.log());
        let app = SocketAddr::from(([127, 0, 0, 1], app_lease.port()));
        echo_once(app);
        let before = records(&client).len();
        relay.pause();
        thread::sleep(Duration::from_secs(20));
        let during: Vec<String> = records(&client)[before..].to_vec();
        relay.resume();
        assert!(client.wait_for_log_count("tunnel established", 8, Duration::from_secs(15)), "{io}: {}", client.log());
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        eprintln!("{io}: {} log lines at the default level during a 20 s outage:\n{}", during.len(), during.join("\n"));
        // Before: 2 lines per tunnel per failed dial, 68 in 20 s with a pool of 4.
        assert!(during.len() <= 10, "{} lines during the outage\n{context}", during.len());
        assert!(during.iter().any(|l| l.contains("cannot reach server")), "{context}");
        // The whole pool came back within one backoff step of the first tunnel that got
        // through (each slot backing off alone left it partly down for up to ~10 s).
        let back: Vec<f64> = client.log().lines()
            .filter(|l| l.contains("tunnel established"))
            .skip(4)
            .map(seconds_of)
            .collect();
        let spread = back[back.len() - 1] - back[0];
        eprintln!("{io}: pool of 4 back {spread:.3} s after its first tunnel");
        assert!(spread < 1.0, "pool back over {spread:.3} s\n{context}");
        assert!(client.log().contains("reachable again"), "{context}");
        echo_once(app);
    }

    #[within(60)]
    fn connections_wait_at_most_connect_wait_and_a_closed_one_is_never_sent(io) {
        let dir = TempDir::new("ops");
        let (server_lease, relay_lease, app_lease) = (reserve_port(), reserve_port(), reserve_port());
        let (backend, seen) = counting_echo();
        let server = Daemon::start(MTCPD, &dir, "server", "server",
            &server_config(server_lease.port(), backend, 4, ""), io);
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_lease.port()));
        wait_listening(server_addr, &server);
        let mut relay = Relay::start(relay_lease.port(), server_addr);
        let limits = "[limits]\nconnect_wait = \"1s\"\nmax_streams_per_session = 2\n\
                      redial_backoff_min = \"50ms\"\nredial_backoff_max = \"300ms\"\n";
        let client = Daemon::start(MTCPD, &dir, "client", "client",
            &client_config(app_lease.port(), relay_lease.port(), 2, limits), io);
        assert!(client.wait_for_log_count("tunnel established", 2, Duration::from_secs(10)), "{}", client.log());
        let app = SocketAddr::from(([127, 0, 0, 1], app_lease.port()));
        echo_once(app);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        relay.pause();
        assert!(client.wait_for_log_count("cannot reach server", 1, Duration::from_secs(5)), "{}", client.log());
        // Two wait (the bound is max_streams_per_session = 2); a third is reset at once.
        let mut waiting: Vec<TcpStream> = (0..2).map(|_| {
            let mut s = TcpStream::connect(app).expect("connect");
            s.write_all(b"late request").expect("write");
            s
        }).collect();
        thread::sleep(Duration::from_millis(100));
        let mut third = TcpStream::connect(app).expect("connect");
        assert!(closed_within(&mut third, Duration::from_millis(500)), "{io}: over the bound, reset at once");
        let asked = Instant::now();
        for s in &mut waiting {
            assert!(closed_within(s, Duration::from_secs(3)), "{io}: reset after connect_wait");
        }
        let waited = asked.elapsed();
        assert!(waited >= Duration::from_millis(700), "{io}: reset after {waited:?}, before connect_wait");
        assert!(client.wait_for_log_count("application connections reset", 1, Duration::from_secs(3)), "{}", client.log());
        // One connects and closes at once while nothing carries it, then the server returns.
        let gone = TcpStream::connect(app).expect("connect");
        thread::sleep(Duration::from_millis(100));
        drop(gone);
        thread::sleep(Duration::from_millis(200));
        relay.resume();
        assert!(client.wait_for_log_count("reachable again", 1, Duration::from_secs(10)), "{}", client.log());
        echo_once(app);
        thread::sleep(Duration::from_millis(300));
        // The backend saw the first and the last request only: nothing late, nothing closed.
        assert_eq!(seen.load(Ordering::SeqCst), 2, "{io}\n{}", client.log());
    }

    #[within(60)]
    fn a_connection_beyond_max_streams_is_reset_at_once_and_logged(io) {
        let dir = TempDir::new("ops");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let (backend, _) = counting_echo();
        let server = Daemon::start(MTCPD, &dir, "server", "server",
            &server_config(server_lease.port(), backend, 2, ""), io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], server_lease.port())), &server);
        let client = Daemon::start(MTCPD, &dir, "client", "client",
            &client_config(app_lease.port(), server_lease.port(), 2,
                "[limits]\nmax_streams_per_session = 4\n"), io);
        assert!(client.wait_for_log_count("tunnel established", 2, Duration::from_secs(10)), "{}", client.log());
        let app = SocketAddr::from(([127, 0, 0, 1], app_lease.port()));
        // Four streams, each echoed once and held open.
        let mut held: Vec<TcpStream> = (0..4).map(|_| {
            let mut s = TcpStream::connect(app).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            s.write_all(b"ping").expect("write");
            let mut got = [0u8; 4];
            s.read_exact(&mut got).expect("echo");
            s
        }).collect();
        // The fifth and sixth are reset at once, not held until connect_wait (5 s).
        for _ in 0..2 {
            let asked = Instant::now();
            let mut over = TcpStream::connect(app).expect("connect");
            let _ = over.write_all(b"ping");
            assert!(closed_within(&mut over, Duration::from_secs(2)), "{io}: over the limit, reset");
            assert!(asked.elapsed() < Duration::from_secs(2), "{io}: reset after {:?}", asked.elapsed());
        }
        let line = "reset: stream limit reached: max_streams 4";
        assert!(client.wait_for_log_count(line, 1, Duration::from_secs(3)), "{io}\n{}", client.log());
        // Said once (repeats are summarised), as a warning.
        let said = records(&client).into_iter().filter(|l| l.contains(line)).count();
        assert_eq!(said, 1, "{io}\n{}", client.log());
        // One closes; then a new connection is carried again.
        let gone = held.pop().expect("one held");
        gone.shutdown(Shutdown::Write).expect("shutdown");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(app).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let _ = s.write_all(b"ping");
            let mut got = [0u8; 4];
            if s.read_exact(&mut got).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "{io}: no stream after a close\n{}", client.log());
            thread::sleep(Duration::from_millis(50));
        }
        drop(gone);
    }

    #[within(60)]
    fn an_unlisted_target_is_refused_and_the_client_says_so(io) {
        let dir = TempDir::new("ops");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let (default_backend, default_seen) = counting_echo();
        let (listed, listed_seen) = counting_echo();
        let (unlisted, unlisted_seen) = counting_echo();
        let allow = format!("[[server.forward]]\nname = \"listed\"\ntarget = \"{listed}\"\n");
        let mut server = Daemon::start(MTCPD, &dir, "server", "server",
            &server_config(server_lease.port(), default_backend, 4, &allow), io);
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_lease.port()));
        wait_listening(server_addr, &server);
        let other_app = reserve_port();
        let forwards = format!(
            "[[client.forward]]\nname = \"good\"\nlisten = \"127.0.0.1:{}\"\ntarget = \"{listed}\"\n\
             [[client.forward]]\nname = \"sneaky\"\nlisten = \"127.0.0.1:{}\"\ntarget = \"{unlisted}\"\n",
            app_lease.port(), other_app.port());
        let config = format!("mode = \"client\"\npsk = \"{KEY}\"\n[client]\nserver_ip = \"127.0.0.1\"\n\
                              server_port = {}\nconnection_pool_size = 2\n{forwards}", server_lease.port());
        let client = Daemon::start(MTCPD, &dir, "client", "client", &config, io);
        let good = SocketAddr::from(([127, 0, 0, 1], app_lease.port()));
        let sneaky = SocketAddr::from(([127, 0, 0, 1], other_app.port()));
        wait_listening(sneaky, &client);
        echo_once(good);
        for _ in 0..3 {
            let mut s = TcpStream::connect(sneaky).expect("connect");
            let _ = s.write_all(b"hello?");
            assert!(closed_within(&mut s, Duration::from_secs(5)), "{io}: refused");
        }
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        assert_eq!(listed_seen.load(Ordering::SeqCst), 1, "{context}");
        assert_eq!(unlisted_seen.load(Ordering::SeqCst), 0, "{context}");
        assert_eq!(default_seen.load(Ordering::SeqCst), 0, "{context}");
        // Said once on each side, with the forward's name on the client.
        let refused = records(&client).into_iter()
            .filter(|l| l.contains("refused target") && l.contains("sneaky")).count();
        assert_eq!(refused, 1, "{context}");
        assert_eq!(records(&server).iter().filter(|l| l.contains("is not a [[server.forward]] target")).count(), 1, "{context}");
        assert!(client.log().contains("forward=\"good\"") || client.log().contains("forward=good"), "{context}");
        // The old behaviour, by choice: unlisted targets go to the default backend.
        server.process.terminate(Duration::from_secs(10));
        let allow = format!("unlisted_to_default_backend = true\n{allow}");
        let _server = Daemon::start(MTCPD, &dir, "server2", "server",
            &server_config(server_lease.port(), default_backend, 4, &allow), io);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut s = TcpStream::connect(sneaky).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let _ = s.write_all(b"ping");
            let mut got = [0u8; 4];
            if s.read_exact(&mut got).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "{io}: never reached the default backend\n{}", client.log());
            thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(unlisted_seen.load(Ordering::SeqCst), 0);
        assert!(default_seen.load(Ordering::SeqCst) >= 1);
    }

    #[within(60)]
    fn a_smaller_grant_is_one_line_and_normal_stops_are_not_warnings(io) {
        let dir = TempDir::new("ops");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let (backend, _) = counting_echo();
        let mut server = Daemon::start(MTCPD, &dir, "server", "server",
            &server_config(server_lease.port(), backend, 4, ""), io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], server_lease.port())), &server);
        let mut client = Daemon::start(MTCPD, &dir, "client", "client",
            &client_config(app_lease.port(), server_lease.port(), 8, ""), io);
        assert!(client.wait_for_log_count("tunnel established", 4, Duration::from_secs(10)), "{}", client.log());
        echo_once(SocketAddr::from(([127, 0, 0, 1], app_lease.port())));
        let status = client.process.terminate(Duration::from_secs(10)).expect("client exits");
        assert!(status.success());
        thread::sleep(Duration::from_millis(300));
        let status = server.process.terminate(Duration::from_secs(10)).expect("server exits");
        assert!(status.success());
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        assert_eq!(client.log().matches("server granted 4 of 8 tunnels").count(), 1, "{context}");
        for (side, daemon) in [("client", &client), ("server", &server)] {
            let warnings: Vec<String> = records(daemon).into_iter()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .filter(|l| !l.contains("state_dir") && !l.contains("pin"))
                .collect();
            assert!(warnings.is_empty(), "{side}: {warnings:#?}\n{context}");
            assert!(daemon.log().contains("stopped: every stream finished"), "{side}\n{context}");
            assert!(!daemon.log().contains("broke the protocol"), "{side}\n{context}");
        }
    }

    #[within(60)]
    fn a_server_restart_is_an_info_line_not_a_protocol_error(io) {
        let dir = TempDir::new("ops");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let (backend, _) = counting_echo();
        let config = server_config(server_lease.port(), backend, 2, "");
        let mut server = Daemon::start(MTCPD, &dir, "server", "server", &config, io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], server_lease.port())), &server);
        let fast = "[limits]\nredial_backoff_min = \"50ms\"\nredial_backoff_max = \"300ms\"\n";
        let client = Daemon::start(MTCPD, &dir, "client", "client",
            &client_config(app_lease.port(), server_lease.port(), 2, fast), io);
        assert!(client.wait_for_log_count("tunnel established", 2, Duration::from_secs(10)), "{}", client.log());
        // A crash: no GO_AWAY, the new process does not know the session.
        server.process.signal(9); // SIGKILL
        let _ = server.process.wait_timeout(Duration::from_secs(5));
        let restarted = Daemon::start(MTCPD, &dir, "server2", "server", &config, io);
        assert!(
            client.wait_for_log_count("tunnel established", 4, Duration::from_secs(15)),
            "{io}: {}\n--- restarted server\n{}",
            client.log(),
            restarted.log()
        );
        echo_once(SocketAddr::from(([127, 0, 0, 1], app_lease.port())));
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), restarted.log());
        let lost: Vec<String> = records(&client).into_iter()
            .filter(|l| l.contains("no longer knows this session")).collect();
        assert_eq!(lost.len(), 1, "{context}");
        assert!(lost[0].contains(" INFO "), "{context}");
        assert!(!client.log().contains("broke the protocol"), "{context}");
    }

    #[within(60)]
    fn the_congestion_control_in_use_is_said_once_per_session_and_a_missing_one_is_one_warning(io) {
        let dir = TempDir::new("ops");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let (backend, _) = counting_echo();
        // The server asks for one the kernel has; the client for one no kernel here has.
        let server = Daemon::start(MTCPD, &dir, "server", "server",
            &format!("congestion = \"reno\"\n{}", server_config(server_lease.port(), backend, 4, "")), io);
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_lease.port()));
        wait_listening(server_addr, &server);
        let client = Daemon::start(MTCPD, &dir, "client", "client",
            &format!("congestion = \"bbr2\"\n{}", client_config(app_lease.port(), server_lease.port(), 4, "")), io);
        assert!(client.wait_for_log_count("tunnel established", 4, Duration::from_secs(10)), "{}", client.log());
        echo_once(SocketAddr::from(([127, 0, 0, 1], app_lease.port())));
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        // What the kernel falls back to, read independently of the daemon.
        let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .expect("the system default congestion control").trim().to_owned();
        let offered = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .expect("the available congestion controls");
        assert!(!offered.split_whitespace().any(|a| a == "bbr2"), "this kernel has bbr2: {offered}");
        let client_records = records(&client);
        let refused: Vec<&String> = client_records.iter()
            .filter(|l| l.contains("congestion = \"bbr2\" cannot be set")).collect();
        assert_eq!(refused.len(), 1, "one warning for four tunnels\n{context}");
        assert!(refused[0].contains(" WARN "), "{context}");
        assert!(refused[0].contains(offered.trim()), "names what the kernel offers\n{context}");
        let said: Vec<&String> = client_records.iter()
            .filter(|l| l.contains("the session's tunnels run congestion control")).collect();
        assert_eq!(said.len(), 1, "once per session\n{context}");
        assert!(said[0].contains(&format!("{default:?}, not the configured \"bbr2\"")), "{context}");
        let server_said: Vec<String> = records(&server).into_iter()
            .filter(|l| l.contains("the session's tunnels run congestion control")).collect();
        assert_eq!(server_said.len(), 1, "once per session\n{context}");
        assert!(server_said[0].contains("congestion control \"reno\"") && server_said[0].contains(" INFO "), "{context}");
        assert!(!server.log().contains("cannot be set"), "{context}");
    }
}
