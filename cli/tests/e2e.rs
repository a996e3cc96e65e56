//! End-to-end tests through the real `mtcpd` binary on loopback: an application → mtcpd client
//! → tunnels → mtcpd server → a backend this test runs. Every check compares bytes (SHA-256).
//! Each test exists once per I/O driver, by name (`…_mio`, `…_uring`: the test kit's
//! `driver_tests!`), so one driver's failure never hides the other's. Processes are stopped
//! (the kit's `ChildGuard`) and temporary files removed even when a test fails.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::backends::{self, SinkReport};
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::pattern::{self, Checksum};
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO` at info level.
fn start_daemon(dir: &TempDir, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    start_with(dir, name, role, config, &["--io", io.name()], "info")
}

/// Like [`start_daemon`], with extra command-line arguments and log level.
fn start_with(
    dir: &TempDir,
    name: &str,
    role: &str,
    config: &str,
    args: &[&str],
    level: &str,
) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .args(args)
        .log_filter(&format!("mtcpd={level},mtcpd_engine={level}"))
        .spawn()
}

/// A client + server pair in front of `backend`.
struct Pair {
    _dir: TempDir,
    server: Daemon,
    client: Daemon,
    app_addr: SocketAddr,
    tunnel_port: u16,
    /// The two ports stay leased to this test while its daemons run.
    _ports: [PortLease; 2],
}

const KEY: &str = "e2e-test-key-0123456789abcdef-0123456789";

fn server_config(tunnel_port: u16, backend: SocketAddr) -> String {
    format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {tunnel_port}\n\
         backend_ip = \"{}\"\nbackend_port = {}\nconnection_pool_size = 8\n\
         [limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n",
        backend.ip(),
        backend.port()
    )
}

fn client_config(app_port: u16, tunnel_port: u16, pool: u16) -> String {
    format!(
        "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\nlocal_listen_port = {app_port}\n\
         server_ip = \"127.0.0.1\"\nserver_port = {tunnel_port}\nconnection_pool_size = {pool}\n\
         [limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n\
         redial_backoff_min = \"50ms\"\nredial_backoff_max = \"500ms\"\ndrain_timeout = \"2s\"\n"
    )
}

/// Lines of `log` at `level` that report `refusal`.
fn refusals(log: &str, level: &str, refusal: &str) -> usize {
    log.lines()
        .filter(|line| line.contains(level) && line.contains(refusal))
        .count()
}

fn wait_listening(addr: SocketAddr, what: &str, daemon: &Daemon) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "{what} never listened on {addr}; log:\n{}",
        daemon.log()
    );
}

impl Pair {
    fn start(backend: SocketAddr, io: Driver, pool: u16) -> Pair {
        Self::start_with_top(backend, io, pool, "")
    }

    /// [`Pair::start`] with `top` (top-level config lines) at the head of both configs.
    fn start_with_top(backend: SocketAddr, io: Driver, pool: u16, top: &str) -> Pair {
        let dir = TempDir::new("e2e");
        let ports = [reserve_port(), reserve_port()];
        let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
        let server = start_daemon(
            &dir,
            "server",
            "server",
            &format!("{top}{}", server_config(tunnel_port, backend)),
            io,
        );
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], tunnel_port)),
            "server",
            &server,
        );
        let client = start_daemon(
            &dir,
            "client",
            "client",
            &format!("{top}{}", client_config(app_port, tunnel_port, pool)),
            io,
        );
        let app_addr = SocketAddr::from(([127, 0, 0, 1], app_port));
        wait_listening(app_addr, "client", &client);
        Pair {
            _dir: dir,
            server,
            client,
            app_addr,
            tunnel_port,
            _ports: ports,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.app_addr).expect("connect to the mtcpd client");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s
    }

    fn logs(&self) -> String {
        format!(
            "--- server log\n{}\n--- client log\n{}",
            self.server.log(),
            self.client.log()
        )
    }
}

// Backends (echo and sink come from the test kit) ---------------------------------------------

/// Answers one HTTP request with a body naming the path asked for.
fn http_backend(conn: TcpStream) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut path = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if path.is_empty() {
            path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        }
        if line == "\r\n" {
            break;
        }
        line.clear();
    }
    let body = format!("hello from the backend, you asked for {path}\n");
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Sends `total` pattern bytes of stream `seed` to a sink backend through `s`, half-closes,
/// and returns (SHA-256 sent, what the sink reports).
fn send_to_sink(s: TcpStream, total: u64, seed: u64) -> ([u8; 32], SinkReport) {
    backends::send_to_sink(s, seed, total).expect("send through the tunnel, then read the digest")
}

fn tunnel_local_ports(tunnel_port: u16) -> Vec<u16> {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{tunnel_port}"),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|local| local.rsplit(':').next()?.parse().ok())
        .collect()
}

// Tests --------------------------------------------------------------------------------------

/// The server's fingerprint as it logs it at start.
fn logged_fingerprint(log: &str) -> Option<String> {
    let at = log.find("fingerprint=sha256:")? + "fingerprint=".len();
    Some(log[at..at + "sha256:".len() + 64].to_owned())
}

/// Waits up to 20 s for `daemon`'s log to contain `text`.
fn wait_for_log(daemon: &Daemon, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if daemon.log().contains(text) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

driver_tests! {
    fn fingerprint_command_prints_what_the_server_logs_and_a_pin_connects(io) {
        let backend = backends::serve(http_backend);
        let dir = TempDir::new("e2e");
        let ports = [reserve_port(), reserve_port()];
        let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
        let state = dir.0.join("state");
        let server_toml = format!(
            "{}[tls]\nstate_dir = \"{}\"\n",
            server_config(tunnel_port, backend),
            state.display()
        );
        let config_path = dir.0.join("fp-server.toml");
        std::fs::write(&config_path, &server_toml).expect("config");
        let printed = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["fingerprint", "-c"])
            .arg(&config_path)
            .output()
            .expect("mtcpd fingerprint");
        assert!(printed.status.success(), "{printed:?}");
        let printed = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
        assert!(printed.starts_with("sha256:") && printed.len() == 71, "{printed}");
        let server = start_daemon(&dir, "server", "server", &server_toml, io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel_port)), "server", &server);
        assert_eq!(logged_fingerprint(&server.log()).as_deref(), Some(printed.as_str()), "{}", server.log());
        let client_toml = format!(
            "{}[tls]\nserver_fingerprint = \"{printed}\"\n",
            client_config(app_port, tunnel_port, 2)
        );
        let client = start_daemon(&dir, "client", "client", &client_toml, io);
        let app = SocketAddr::from(([127, 0, 0, 1], app_port));
        wait_listening(app, "client", &client);
        let mut s = TcpStream::connect(app).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(b"GET /pinned HTTP/1.1\r\n\r\n").expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(response.ends_with("/pinned\n"), "{io}: {response}\n{}", client.log());
    }

    fn insecure_plaintext_on_one_end_says_so_on_both(io) {
        let backend = backends::serve(http_backend);
        let dir = TempDir::new("e2e");
        let ports = [reserve_port(), reserve_port()];
        let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
        // Top-level keys go before the first table.
        let plain = |config: String| format!("insecure_plaintext = true\n{config}");
        let server = start_daemon(&dir, "server", "server", &plain(server_config(tunnel_port, backend)), io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel_port)), "server", &server);
        assert!(server.log().contains("insecure_plaintext"), "warned at start: {}", server.log());
        let client = start_daemon(&dir, "client", "client", &client_config(app_port, tunnel_port, 2), io);
        assert!(
            wait_for_log(&server, "client speaks TLS; set insecure_plaintext on both ends or neither"),
            "{io}: {}",
            server.log()
        );
        drop(client);
        drop(server);
        let tls_server = start_daemon(&dir, "server2", "server", &server_config(tunnel_port, backend), io);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel_port)), "server", &tls_server);
        let plain_client = start_daemon(&dir, "client2", "client", &plain(client_config(app_port, tunnel_port, 2)), io);
        assert!(wait_for_log(&tls_server, "not TLS (a plaintext mtcpd client?"), "{io}: {}", tls_server.log());
        assert!(
            wait_for_log(&plain_client, "set insecure_plaintext on both ends or neither"),
            "{io}: {}",
            plain_client.log()
        );
    }

    fn http_request_through_client_and_server_returns_the_right_body(io) {
        let backend = backends::serve(http_backend);
        let pair = Pair::start(backend, io, 4);
        let mut s = pair.connect();
        s.write_all(b"GET /some/path HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{io}: {response}\n{}",
            pair.logs()
        );
        assert!(
            response.ends_with("hello from the backend, you asked for /some/path\n"),
            "{io}: {response}"
        );
        let log = pair.client.log();
        assert!(log.contains("tunnel established"), "{io}: {log}");
        assert!(
            log.contains("congestion="),
            "congestion control logged per tunnel: {log}"
        );
    }

    fn one_gib_one_way_through_eight_tunnels_is_byte_exact(io) {
        let backend = backends::sink_backend();
        let pair = Pair::start(backend, io, 8);
        let started = Instant::now();
        let (ours, theirs) = send_to_sink(pair.connect(), 1 << 30, 42);
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{io}: 1 GiB in {secs:.2}s ({:.2} Gbit/s)", 8.0 / secs);
        assert_eq!(theirs.len, 1 << 30, "{io}\n{}", pair.logs());
        assert_eq!(ours, theirs.sha256, "{io}: sha256 differs");
    }

    fn two_hundred_fifty_six_mib_both_ways_at_once_is_byte_exact(io) {
        let backend = backends::echo_backend();
        let pair = Pair::start(backend, io, 8);
        let s = pair.connect();
        let mut reader = s.try_clone().expect("clone");
        const TOTAL: u64 = 256 << 20;
        let receiver = thread::spawn(move || {
            pattern::read_to_end_checksum(&mut reader).unwrap_or_else(|e| panic!("read: {e}"))
        });
        let mut writer = s;
        let sent = pattern::write_pattern(&mut writer, 7, TOTAL).expect("write");
        writer.shutdown(Shutdown::Write).expect("half-close");
        let echoed: Checksum = receiver.join().expect("receiver");
        assert_eq!(echoed.len(), TOTAL, "{io}\n{}", pair.logs());
        assert_eq!(sent, echoed.digest(), "{io}: sha256 differs");
    }

    fn two_thousand_concurrent_streams_echo_random_data(io) {
        let backend = backends::echo_backend();
        let pair = Pair::start(backend, io, 4);
        const STREAMS: usize = 2000;
        const SIZE: usize = 8 * 1024;
        let mut conns: Vec<TcpStream> = (0..STREAMS).map(|_| pair.connect()).collect();
        let mut sent = Vec::with_capacity(STREAMS);
        for (i, c) in conns.iter_mut().enumerate() {
            let data = pattern::bytes(i as u64 + 1, SIZE);
            c.write_all(&data).expect("write");
            sent.push(data);
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let mut back = vec![0u8; SIZE];
            c.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("{io}: stream {i}: {e}\n{}", pair.logs()));
            assert_eq!(back, sent[i], "{io}: stream {i} echoed wrong bytes");
        }
    }

    fn hol_relief_on_both_ends_carries_every_byte_exactly_once(io) {
        // Both daemons announce the HOL_REPORT capability (the handshake carries it); loopback
        // never stalls a tunnel, so this checks the negotiation and that nothing else changes.
        let backend = backends::sink_backend();
        let pair = Pair::start_with_top(backend, io, 8, "hol_relief = true\n");
        let (ours, theirs) = send_to_sink(pair.connect(), 64 << 20, 13);
        assert_eq!(theirs.len, 64 << 20);
        assert_eq!(ours, theirs.sha256, "{io}\n{}", pair.logs());
    }

    fn half_close_reaches_the_backend_and_its_answer_comes_back(io) {
        let backend = backends::sink_backend();
        let pair = Pair::start(backend, io, 2);
        // The backend answers only after EOF: the half-close must cross the tunnel while the
        // other direction stays open for the answer.
        let (ours, theirs) = send_to_sink(pair.connect(), 100_000, 3);
        assert_eq!(theirs.len, 100_000);
        assert_eq!(ours, theirs.sha256, "{io}\n{}", pair.logs());
    }

    fn killing_a_tunnel_mid_transfer_loses_nothing_and_it_is_redialed(io) {
        if Command::new("ss").arg("-V").output().is_err() {
            eprintln!("skipped: `ss` (iproute2) is not installed");
            return;
        }
        let backend = backends::sink_backend();
        let pair = Pair::start(backend, io, 4);
        let port = pair.tunnel_port;
        let s = pair.connect();
        let transfer = thread::spawn(move || send_to_sink(s, 512 << 20, 11));
        thread::sleep(Duration::from_millis(300));
        let before = tunnel_local_ports(port);
        assert!(!before.is_empty(), "no tunnels seen by ss");
        let victim = before[0];
        let killed = Command::new("ss")
            .args([
                "-K",
                "-tn",
                "state",
                "established",
                "(",
                "sport",
                "=",
                &format!(":{victim}"),
                "and",
                "dport",
                "=",
                &format!(":{port}"),
                ")",
            ])
            .output()
            .expect("ss -K");
        if !killed.status.success() {
            eprintln!(
                "skipped: ss -K is not supported here ({})",
                String::from_utf8_lossy(&killed.stderr)
            );
            return;
        }
        let (ours, theirs) = transfer.join().expect("transfer");
        assert_eq!(theirs.len, 512 << 20, "{io}\n{}", pair.logs());
        assert_eq!(
            ours, theirs.sha256,
            "{io}: sha256 differs after a tunnel was killed"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while tunnel_local_ports(port).len() < before.len() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let log = pair.client.log();
        assert!(log.contains("tunnel lost"), "{io}: {log}");
        assert!(
            log.matches("tunnel established").count() > before.len(),
            "{io}: the lost tunnel was re-dialed\n{log}"
        );
    }

    fn client_started_before_the_server_retries_then_works(io) {
        let backend = backends::serve(http_backend);
        let dir = TempDir::new("e2e");
        let ports = [reserve_port(), reserve_port()];
        let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
        let client = start_daemon(
            &dir,
            "client",
            "client",
            &client_config(app_port, tunnel_port, 2),
            io,
        );
        thread::sleep(Duration::from_millis(1500));
        let server = start_daemon(
            &dir,
            "server",
            "server",
            &server_config(tunnel_port, backend),
            io,
        );
        let app = SocketAddr::from(([127, 0, 0, 1], app_port));
        wait_listening(app, "client", &client);
        let mut s = TcpStream::connect(app).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(b"GET /late HTTP/1.1\r\n\r\n").expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(
            response.ends_with("/late\n"),
            "{io}: {response}\n--- client\n{}\n--- server\n{}",
            client.log(),
            server.log()
        );
        assert!(
            client.log().contains("dial failed"),
            "{io}: retries are logged"
        );
    }

    fn garbage_on_the_tunnel_port_is_logged_and_closed_while_others_are_served(io) {
        let backend = backends::serve(http_backend);
        let pair = Pair::start(backend, io, 2);
        let mut junk = TcpStream::connect(("127.0.0.1", pair.tunnel_port)).expect("connect");
        junk.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        junk.write_all(b"GET / HTTP/1.1\r\nHost: not-a-tunnel\r\n\r\n")
            .expect("write");
        // At most a TLS alert (7 bytes: record type 21), then the connection closes.
        let mut answer = Vec::new();
        let _ = junk.read_to_end(&mut answer);
        assert!(
            answer.is_empty() || (answer.len() <= 7 && answer[0] == 0x15),
            "the server closes a garbage connection with no more than an alert: {answer:?}"
        );
        let mut s = pair.connect();
        s.write_all(b"GET /still-fine HTTP/1.1\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(response.ends_with("/still-fine\n"), "{io}: {response}");
        assert!(
            pair.server.log().contains("not TLS"),
            "{io}: {}",
            pair.server.log()
        );
    }

    fn a_wrong_key_is_one_error_on_each_side_not_a_flood(io) {
        let backend = backends::serve(http_backend);
        let dir = TempDir::new("e2e");
        let ports = [reserve_port(), reserve_port()];
        let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
        let server = start_daemon(
            &dir,
            "server",
            "server",
            &server_config(tunnel_port, backend),
            io,
        );
        let tunnel_addr = SocketAddr::from(([127, 0, 0, 1], tunnel_port));
        wait_listening(tunnel_addr, "server", &server);
        let wrong = client_config(app_port, tunnel_port, 4)
            .replace(KEY, "not-the-servers-key-0123456789-abcdefghij");
        // At debug level, to see the attempts the client does not report above it.
        let args = ["--io", io.name()];
        let client = start_with(&dir, "client", "client", &wrong, &args, "debug");
        let started = Instant::now();
        let refused = format!("server {tunnel_addr} rejected our key");
        // Right after the second refusal the next attempt is at least 1 s away: an application
        // connecting now is closed at once, not held until then.
        while refusals(&client.log(), " DEBUG ", &refused) == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "{io}: {}", client.log());
            thread::sleep(Duration::from_millis(10));
        }
        let mut app = TcpStream::connect(("127.0.0.1", app_port)).expect("connect");
        app.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let asked = Instant::now();
        let closed = app.read(&mut [0u8; 16]);
        let waited = asked.elapsed();
        assert!(
            matches!(&closed, Ok(0)) || closed.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
            "{io}: {closed:?}"
        );
        assert!(waited < Duration::from_millis(500), "{io}: closed after {waited:?}");
        // Before the redesign: ~20 lines a second on each side, for as long as it ran.
        thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
        let (client_log, server_log) = (client.log(), server.log());
        let context = format!("{io}\n--- client\n{client_log}\n--- server\n{server_log}");
        assert_eq!(refusals(&client_log, " ERROR ", &refused), 1, "{context}");
        // Waits of at least 0.5, 1, 2 and 4 s: three retries fit in 5 s (a fourth if the machine
        // is slow); re-dialing at once would be thousands.
        let again = refusals(&client_log, " DEBUG ", &refused);
        assert!(again <= 4, "{again} retries in 5 s\n{context}");
        let failed = server_log.matches("authentication failed from 127.0.0.1").count();
        assert_eq!(failed, 1, "{context}");
        for (side, log) in [("client", &client_log), ("server", &server_log)] {
            // Records above debug, apart from the start-up configuration (a line per table).
            let records = log
                .lines()
                .filter(|line| line.starts_with("20") && !line.contains(" DEBUG "))
                .filter(|line| !line.contains("mtcpd::startup_log"))
                .count();
            assert!(records <= 10, "{side}: {records} records in 5 s\n{context}");
        }
    }

    fn sigterm_drains_and_exits_zero(io) {
        let backend = backends::serve(http_backend);
        let mut pair = Pair::start(backend, io, 2);
        let mut s = pair.connect();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        // `s` is still open for writing: the client drains it for its drain_timeout (2 s), then
        // exits anyway.
        let started = Instant::now();
        let status = pair.client.terminate(Duration::from_secs(10)).expect("client exits within 10 s");
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{io}: the open stream was drained (exited after {:?})\n{}",
            started.elapsed(),
            pair.logs()
        );
        assert!(
            pair.client.log().contains("drain timeout"),
            "{}",
            pair.client.log()
        );
        assert!(
            status.success(),
            "{io}: client exit {status:?}\n{}",
            pair.logs()
        );
        let status = pair.server.terminate(Duration::from_secs(10)).expect("server exits within 10 s");
        assert!(
            status.success(),
            "{io}: server exit {status:?}\n{}",
            pair.logs()
        );
    }

    fn sessions_spread_over_server_workers_and_tunnels_reach_their_home_worker(io) {
        let backend = backends::sink_backend();
        let dir = TempDir::new("e2e");
        let tunnel = reserve_port();
        let tunnel_port = tunnel.port();
        // Three workers on (likely) two cores: pinning wraps around, hand-offs cross threads.
        let server = start_with(
            &dir,
            "server",
            "server",
            &server_config(tunnel_port, backend),
            &["--io", io.name(), "--cores", "3"],
            "debug",
        );
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], tunnel_port)),
            "server",
            &server,
        );
        // Four client processes (four sessions of 8 tunnels each), the last with two workers
        // of its own (two sessions, each with its own pool).
        let mut clients = Vec::new();
        let mut app_ports = Vec::new();
        for c in 0..4 {
            app_ports.push(reserve_port());
            let app_port = app_ports[c].port();
            let cores = if c == 3 { "2" } else { "1" };
            let client = start_with(
                &dir,
                &format!("client{c}"),
                "client",
                &client_config(app_port, tunnel_port, 8),
                &["--io", io.name(), "--cores", cores],
                "info",
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], app_port));
            wait_listening(addr, "client", &client);
            clients.push((client, addr));
        }
        let logs = |clients: &[(Daemon, SocketAddr)]| {
            let mut out = format!("--- server\n{}", server.log());
            for (i, (c, _)) in clients.iter().enumerate() {
                out += &format!("\n--- client{i}\n{}", c.log());
            }
            out
        };
        // Every client carries several concurrent transfers; all must arrive byte-exact.
        let transfers: Vec<_> = clients
            .iter()
            .enumerate()
            .flat_map(|(c, (_, addr))| {
                (0..3).map(move |k| {
                    let addr = *addr;
                    thread::spawn(move || {
                        let s = TcpStream::connect(addr).expect("connect to a client");
                        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                        send_to_sink(s, 8 << 20, (c * 10 + k) as u64 + 1)
                    })
                })
            })
            .collect();
        for t in transfers {
            let (ours, theirs) = t.join().expect("transfer thread");
            assert_eq!(theirs.len, 8 << 20, "{io}\n{}", logs(&clients));
            assert_eq!(ours, theirs.sha256, "{io}: sha256 differs\n{}", logs(&clients));
        }
        let log = server.log();
        let sessions = log.matches("session started").count();
        assert_eq!(
            sessions, 5,
            "{io}: 3 one-worker clients + 2 sessions of a two-worker client\n{log}"
        );
        let pinned = log.matches("worker pinned").count();
        let unpinned = log.matches("cannot pin worker").count();
        assert_eq!(pinned + unpinned, 3, "{io}: three workers started\n{log}");
        // 40 tunnels land on 3 workers by the kernel's hash: some must have been handed over.
        assert!(
            log.contains("tunnel handed to its session's worker"),
            "{io}: no tunnel crossed workers\n{log}"
        );
        let established = log.matches("tunnel established").count();
        assert!(
            established >= 40,
            "{io}: every tunnel joins its session\n{log}"
        );
    }
}
