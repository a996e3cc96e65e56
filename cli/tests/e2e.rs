//! End-to-end tests through the real `mtcpd` binary on loopback: an application → mtcpd client
//! → tunnels → mtcpd server → a backend this test runs. Every check compares bytes (SHA-256).
//! Each test runs under every I/O driver this build has (see `DRIVERS`); processes are killed
//! and temporary files removed even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Drivers exercised.
const DRIVERS: &[&str] = &["mio", "uring"];

const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A port free right now, chosen below the kernel's ephemeral range (32768 and up here), so the
/// outgoing connections of tests running in parallel cannot take it between this check and the
/// daemon's bind.
fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = u64::from(std::process::id()).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + ((salt.wrapping_add(n.wrapping_mul(104_729))) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("mtcpd-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running mtcpd process, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &TempDir, name: &str, role: &str, config: &str, io: &str) -> Daemon {
        Self::start_with(dir, name, role, config, &["--io", io], "info")
    }

    /// Like [`Daemon::start`], with extra command-line arguments and log level.
    fn start_with(
        dir: &TempDir,
        name: &str,
        role: &str,
        config: &str,
        args: &[&str],
        level: &str,
    ) -> Daemon {
        let path = dir.0.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let log = dir.0.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args([role, "-c"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", format!("mtcpd={level},mtcpd_engine={level}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn mtcpd");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status within 10 s.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client + server pair in front of `backend`.
struct Pair {
    _dir: TempDir,
    server: Daemon,
    client: Daemon,
    app_addr: SocketAddr,
    tunnel_port: u16,
}

const KEY: &str = "e2e-test-key-0123456789abcdef";

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

fn wait_listening(addr: SocketAddr, what: &str, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} never listened on {addr}; log:\n{}", daemon.log());
}

impl Pair {
    fn start(backend: SocketAddr, io: &str, pool: u16) -> Pair {
        let dir = TempDir::new();
        let tunnel_port = free_port();
        let app_port = free_port();
        let server = Daemon::start(
            &dir,
            "server",
            "server",
            &server_config(tunnel_port, backend),
            io,
        );
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], tunnel_port)),
            "server",
            &server,
        );
        let client = Daemon::start(
            &dir,
            "client",
            "client",
            &client_config(app_port, tunnel_port, pool),
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

// Backends ------------------------------------------------------------------------------------

/// Serves each connection on its own thread with `handle`, for as long as the test runs.
fn backend(handle: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            let _ = thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || handle(conn));
        }
    });
    addr
}

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

fn echo_backend(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Reads to EOF, then answers with the SHA-256 and length of what it read.
fn digest_backend(mut conn: TcpStream) {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&hasher.finalize());
    let _ = conn.write_all(&total.to_be_bytes());
}

/// Fills `buf` with pseudo-random bytes (xorshift), fast enough for GiB transfers.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Sends `total` random bytes, half-closes, and returns (sha256 sent, sha256 and length the
/// digest backend reported).
fn send_and_digest(mut s: TcpStream, total: u64, seed: u64) -> ([u8; 32], [u8; 32], u64) {
    let mut state = seed | 1;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = ((total - sent) as usize).min(buf.len());
        fill_random(&mut state, &mut buf[..n]);
        hasher.update(&buf[..n]);
        s.write_all(&buf[..n]).expect("write through the tunnel");
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = [0u8; 40];
    s.read_exact(&mut answer).expect("digest from the backend");
    let mut theirs = [0u8; 32];
    theirs.copy_from_slice(&answer[..32]);
    let len = u64::from_be_bytes(answer[32..].try_into().expect("8 bytes"));
    (hasher.finalize().into(), theirs, len)
}

// Tests --------------------------------------------------------------------------------------

#[test]
fn http_request_through_client_and_server_returns_the_right_body() {
    let backend = backend(http_backend);
    for io in DRIVERS {
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
}

#[test]
fn one_gib_one_way_through_eight_tunnels_is_byte_exact() {
    let backend = backend(digest_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 8);
        let started = Instant::now();
        let (ours, theirs, len) = send_and_digest(pair.connect(), 1 << 30, 42);
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{io}: 1 GiB in {secs:.2}s ({:.2} Gbit/s)", 8.0 / secs);
        assert_eq!(len, 1 << 30, "{io}\n{}", pair.logs());
        assert_eq!(ours, theirs, "{io}: sha256 differs");
    }
}

#[test]
fn two_hundred_fifty_six_mib_both_ways_at_once_is_byte_exact() {
    let backend = backend(echo_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 8);
        let s = pair.connect();
        let mut reader = s.try_clone().expect("clone");
        const TOTAL: u64 = 256 << 20;
        let receiver = thread::spawn(move || {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        got += n as u64;
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            (got, <[u8; 32]>::from(hasher.finalize()))
        });
        let mut writer = s;
        let mut state = 7u64;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            fill_random(&mut state, &mut buf);
            hasher.update(&buf);
            writer.write_all(&buf).expect("write");
            sent += buf.len() as u64;
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
        let (got, theirs) = receiver.join().expect("receiver");
        assert_eq!(got, TOTAL, "{io}\n{}", pair.logs());
        assert_eq!(
            <[u8; 32]>::from(hasher.finalize()),
            theirs,
            "{io}: sha256 differs"
        );
    }
}

#[test]
fn two_thousand_concurrent_streams_echo_random_data() {
    let backend = backend(echo_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 4);
        const STREAMS: usize = 2000;
        const SIZE: usize = 8 * 1024;
        let mut conns: Vec<TcpStream> = (0..STREAMS).map(|_| pair.connect()).collect();
        let mut sent = Vec::with_capacity(STREAMS);
        for (i, c) in conns.iter_mut().enumerate() {
            let mut data = vec![0u8; SIZE];
            let mut state = i as u64 + 1;
            fill_random(&mut state, &mut data);
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
}

#[test]
fn half_close_reaches_the_backend_and_its_answer_comes_back() {
    let backend = backend(digest_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 2);
        // The backend answers only after EOF: the half-close must cross the tunnel while the
        // other direction stays open for the answer.
        let (ours, theirs, len) = send_and_digest(pair.connect(), 100_000, 3);
        assert_eq!(len, 100_000);
        assert_eq!(ours, theirs, "{io}\n{}", pair.logs());
    }
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

#[test]
fn killing_a_tunnel_mid_transfer_loses_nothing_and_it_is_redialed() {
    if Command::new("ss").arg("-V").output().is_err() {
        eprintln!("skipped: `ss` (iproute2) is not installed");
        return;
    }
    let backend = backend(digest_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 4);
        let port = pair.tunnel_port;
        let s = pair.connect();
        let transfer = thread::spawn(move || send_and_digest(s, 512 << 20, 11));
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
        let (ours, theirs, len) = transfer.join().expect("transfer");
        assert_eq!(len, 512 << 20, "{io}\n{}", pair.logs());
        assert_eq!(
            ours, theirs,
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
}

#[test]
fn client_started_before_the_server_retries_then_works() {
    let backend = backend(http_backend);
    for io in DRIVERS {
        let dir = TempDir::new();
        let tunnel_port = free_port();
        let app_port = free_port();
        let client = Daemon::start(
            &dir,
            "client",
            "client",
            &client_config(app_port, tunnel_port, 2),
            io,
        );
        thread::sleep(Duration::from_millis(1500));
        let server = Daemon::start(
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
}

#[test]
fn garbage_on_the_tunnel_port_is_logged_and_closed_while_others_are_served() {
    let backend = backend(http_backend);
    for io in DRIVERS {
        let pair = Pair::start(backend, io, 2);
        let mut junk = TcpStream::connect(("127.0.0.1", pair.tunnel_port)).expect("connect");
        junk.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        junk.write_all(b"GET / HTTP/1.1\r\nHost: not-a-tunnel\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 64];
        let n = junk.read(&mut buf).unwrap_or(0);
        assert_eq!(
            n, 0,
            "the server closes a garbage connection without answering"
        );
        let mut s = pair.connect();
        s.write_all(b"GET /still-fine HTTP/1.1\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(response.ends_with("/still-fine\n"), "{io}: {response}");
        assert!(
            pair.server.log().contains("bad magic"),
            "{io}: {}",
            pair.server.log()
        );
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let backend = backend(http_backend);
    for io in DRIVERS {
        let mut pair = Pair::start(backend, io, 2);
        let mut s = pair.connect();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        // `s` is still open for writing: the client drains it for its drain_timeout (2 s), then
        // exits anyway.
        let started = Instant::now();
        let status = pair.client.terminate().expect("client exits within 10 s");
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "the open stream was drained"
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
        let status = pair.server.terminate().expect("server exits within 10 s");
        assert!(
            status.success(),
            "{io}: server exit {status:?}\n{}",
            pair.logs()
        );
    }
}

#[test]
fn sessions_spread_over_server_workers_and_tunnels_reach_their_home_worker() {
    let backend = backend(digest_backend);
    for io in DRIVERS {
        let dir = TempDir::new();
        let tunnel_port = free_port();
        // Three workers on (likely) two cores: pinning wraps around, hand-offs cross threads.
        let server = Daemon::start_with(
            &dir,
            "server",
            "server",
            &server_config(tunnel_port, backend),
            &["--io", io, "--cores", "3"],
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
        for c in 0..4 {
            let app_port = free_port();
            let cores = if c == 3 { "2" } else { "1" };
            let client = Daemon::start_with(
                &dir,
                &format!("client{c}"),
                "client",
                &client_config(app_port, tunnel_port, 8),
                &["--io", io, "--cores", cores],
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
                        send_and_digest(s, 8 << 20, (c * 10 + k) as u64 + 1)
                    })
                })
            })
            .collect();
        for t in transfers {
            let (ours, theirs, len) = t.join().expect("transfer thread");
            assert_eq!(len, 8 << 20, "{io}\n{}", logs(&clients));
            assert_eq!(ours, theirs, "{io}: sha256 differs\n{}", logs(&clients));
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
