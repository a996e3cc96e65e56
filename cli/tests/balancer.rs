//! Several servers, through the `mtcpd` binary on loopback, on each I/O driver:
//!
//! - HAProxy (the Debian package `haproxy`; `.ci/run` installs it, and without it these tests
//!   fail, they never pass silently) in TCP mode with `balance source` in front of two mtcpd
//!   servers: every tunnel of the client's session lands on one server (read from both
//!   servers' `/metrics`); that server is killed, and the client's next session is served by
//!   the other, every tunnel of it there, and a new stream carries its bytes (checksummed).
//! - `[client] servers = [...]` without a balancer: the first server is dead, the second
//!   serves, and the client says once that it moved; and the server of a working session is
//!   killed: once the session ends (`session_grace`), the next one is served by the other; and
//!   a first server with another key: the application connection made meanwhile waits for the
//!   next server instead of being closed.
//!
//! Every process (HAProxy, daemons) is stopped by its guard, even when a test fails.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mtcpd::stats::exposition::{Sample, parse};
use mtcpd_testkit::backends;
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::process::ChildGuard;
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const KEY: &str = "balancer-test-key-0123456789abcdef-0123456789";
const POOL: usize = 4;
const SIZE: u64 = 3 * 1024 * 1024 + 7;
const T: Duration = Duration::from_secs(30);

driver_tests! {
    #[within(120)]
    fn haproxy_keeps_a_session_on_one_server_and_fails_over(io) { haproxy_failover(io) }
    #[within(90)]
    fn servers_list_skips_a_dead_first_server(io) { servers_list(io) }
    #[within(90)]
    fn servers_list_moves_on_when_its_server_is_killed(io) { servers_list_kill(io) }
    #[within(90)]
    fn servers_list_skips_a_server_that_refuses_the_key(io) { servers_list_refused(io) }
}

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO` at info level, killed 3 s after SIGTERM at the latest.
fn start_daemon(dir: &Path, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .io(io)
        .log_filter("info")
        .grace(Duration::from_secs(3))
        .spawn()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(addr: SocketAddr, what: impl Fn() -> String) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}; log:\n{}",
        what()
    );
}

fn server_config(tunnel: u16, metrics: u16, backend: SocketAddr) -> String {
    server_config_with_key(KEY, tunnel, metrics, backend)
}

fn server_config_with_key(key: &str, tunnel: u16, metrics: u16, backend: SocketAddr) -> String {
    format!(
        "mode = \"server\"\npsk = \"{key}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
         [server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {tunnel}\n\
         backend_ip = \"127.0.0.1\"\nbackend_port = {}\nconnection_pool_size = {POOL}\n",
        backend.port()
    )
}

/// A client with one forward on `app` and its metrics on `metrics` (the port waited for: a
/// probe of `app` would be a stream); `servers` is its `[client]` server key(s).
fn client_config(app: u16, metrics: u16, servers: &str) -> String {
    format!(
        "mode = \"client\"\npsk = \"{KEY}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
         [client]\n{servers}\nconnection_pool_size = {POOL}\n\
         [[client.forward]]\nname = \"bulk\"\nlisten = \"127.0.0.1:{app}\"\n\
         [limits]\nsession_grace = \"2s\"\nconnect_wait = \"20s\"\n"
    )
}

/// `SIZE` pattern bytes through the client's forward to the sink behind the servers; the
/// sink's checksum must be the sender's.
fn transfer(app: u16, seed: u64) {
    let conn = TcpStream::connect(local(app)).expect("connect to the client's forward");
    conn.set_read_timeout(Some(T)).unwrap();
    let (sent, report) = backends::send_to_sink(conn, seed, SIZE).expect("a transfer");
    assert_eq!(
        (report.len, report.sha256),
        (SIZE, sent),
        "the sink got the bytes"
    );
}

/// The server's `/metrics`, parsed.
fn scrape(port: u16) -> Vec<Sample> {
    use std::io::{Read, Write};
    let Ok(mut conn) = TcpStream::connect_timeout(&local(port), Duration::from_secs(2)) else {
        return Vec::new();
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    parse(body).unwrap_or_default()
}

/// The sessions of the live tunnels a server's metrics show, one entry per tunnel.
fn live_tunnel_sessions(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| s.name == "mtcpd_tunnel_up" && s.value == 1.0)
        .map(|s| s.label("session").to_owned())
        .collect()
}

/// Waits until one server's metrics show the whole pool of one session and the other's none;
/// returns (index of that server, session label).
fn pool_on_one_server(metrics: [u16; 2], context: impl Fn() -> String) -> (usize, String) {
    let deadline = Instant::now() + T;
    loop {
        let seen = metrics.map(|port| live_tunnel_sessions(&scrape(port)));
        for (i, sessions) in seen.iter().enumerate() {
            let other = &seen[1 - i];
            if sessions.len() == POOL
                && sessions.iter().all(|s| *s == sessions[0])
                && other.is_empty()
            {
                return (i, sessions[0].clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pool of {POOL} tunnels is not on one server: {seen:?}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The haproxy binary, or a failure that says how to get it (CI installs it).
fn haproxy_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed: this test runs mtcpd behind it. Install the Debian \
                 package (`apt-get install haproxy`; .ci/run does)"
            )
        })
}

/// HAProxy in TCP mode on `front`, source-address affinity over the two servers, quick
/// health checks; its configuration is written to `dir`.
fn start_haproxy(dir: &Path, front: u16, servers: [u16; 2]) -> (ChildGuard, PathBuf) {
    let config = format!(
        "global\n    maxconn 2000\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 2\n    option redispatch\n\
         frontend mtcpd\n    bind 127.0.0.1:{front}\n    default_backend mtcpd_servers\n\
         backend mtcpd_servers\n    balance source\n    hash-type consistent\n    \
         server a 127.0.0.1:{} check inter 300ms fall 1 rise 2\n    \
         server b 127.0.0.1:{} check inter 300ms fall 1 rise 2\n",
        servers[0], servers[1]
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let log = dir.join("haproxy.log");
    let guard = ChildGuard::spawn(
        Command::new(haproxy_binary())
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.join("haproxy.err")).expect("log file")),
    )
    .expect("spawn haproxy")
    .with_grace(Duration::from_secs(2));
    (guard, dir.join("haproxy.err"))
}

/// Servers "server-a" and "server-b", each with its tunnel and metrics port, both carrying
/// streams to `sink`; server a keyed with `key_a` when given (else the shared key). Returns once
/// both answer on their metrics ports.
fn two_servers(
    dir: &TempDir,
    tunnels: [u16; 2],
    metrics: [u16; 2],
    sink: SocketAddr,
    key_a: Option<&str>,
    io: Driver,
) -> [Daemon; 2] {
    let config_a = match key_a {
        Some(key) => server_config_with_key(key, tunnels[0], metrics[0], sink),
        None => server_config(tunnels[0], metrics[0], sink),
    };
    let config_b = server_config(tunnels[1], metrics[1], sink);
    let servers = [
        start_daemon(&dir.0, "server-a", "server", &config_a, io),
        start_daemon(&dir.0, "server-b", "server", &config_b, io),
    ];
    for (port, server) in metrics.iter().zip(&servers) {
        wait_listening(local(*port), || server.log());
    }
    servers
}

/// A client whose `servers` list names server a, then server b.
fn client_listing(dir: &TempDir, tunnels: [u16; 2], app: u16, metrics: u16, io: Driver) -> Daemon {
    let list = format!(
        "servers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        tunnels[0], tunnels[1]
    );
    start_daemon(
        &dir.0,
        "client",
        "client",
        &client_config(app, metrics, &list),
        io,
    )
}

fn haproxy_failover(io: Driver) {
    let dir = TempDir::new(&format!("balancer-{}", io.name()));
    let leases: Vec<PortLease> = (0..7).map(|_| reserve_port()).collect();
    let [
        tunnel_a,
        tunnel_b,
        metrics_a,
        metrics_b,
        front,
        app,
        client_metrics,
    ] = [0, 1, 2, 3, 4, 5, 6].map(|i| leases[i].port());
    let sink = backends::sink_backend();
    let servers = two_servers(
        &dir,
        [tunnel_a, tunnel_b],
        [metrics_a, metrics_b],
        sink,
        None,
        io,
    );
    let (_haproxy, haproxy_err) = start_haproxy(&dir.0, front, [tunnel_a, tunnel_b]);
    let haproxy_log = || std::fs::read_to_string(&haproxy_err).unwrap_or_default();
    // HAProxy's health checks see both servers up before the client dials.
    thread::sleep(Duration::from_millis(800));
    wait_listening(local(front), haproxy_log);
    let client = start_daemon(
        &dir.0,
        "client",
        "client",
        &client_config(
            app,
            client_metrics,
            &format!("server_ip = \"127.0.0.1\"\nserver_port = {front}"),
        ),
        io,
    );
    wait_listening(local(client_metrics), || client.log());
    let everything = |servers: &[Daemon]| {
        format!(
            "client:\n{}\nservers:\n{}\n{}\nhaproxy:\n{}",
            client.log(),
            servers[0].log(),
            servers[1].log(),
            haproxy_log()
        )
    };
    transfer(app, 1);
    let (first, session) = pool_on_one_server([metrics_a, metrics_b], || everything(&servers));

    // The server of the session dies; HAProxy sends the client's re-dials to the other, which
    // does not know the session: the client starts a new one, all of it there.
    servers[first].process.signal(9); // SIGKILL: gone at once, no GO_AWAY
    let other = 1 - first;
    let (now_on, new_session) = pool_on_one_server([metrics_a, metrics_b], || everything(&servers));
    assert_eq!(now_on, other, "served by the other server now");
    assert_ne!(new_session, session, "a new session");
    transfer(app, 2);
    transfer(app, 3);
    let still = live_tunnel_sessions(&scrape([metrics_a, metrics_b][other]));
    assert_eq!(still, vec![new_session; POOL], "{}", everything(&servers));
}

fn servers_list(io: Driver) {
    let dir = TempDir::new(&format!("servers-list-{}", io.name()));
    let leases: Vec<PortLease> = (0..5).map(|_| reserve_port()).collect();
    let [dead, tunnel, metrics, app, client_metrics] = [0, 1, 2, 3, 4].map(|i| leases[i].port());
    let sink = backends::sink_backend();
    let server = start_daemon(
        &dir.0,
        "server",
        "server",
        &server_config(tunnel, metrics, sink),
        io,
    );
    wait_listening(local(metrics), || server.log());
    // Nothing listens on `dead` (its lease keeps other tests off it).
    let servers = format!("servers = [\"127.0.0.1:{dead}\", \"127.0.0.1:{tunnel}\"]");
    let client = start_daemon(
        &dir.0,
        "client",
        "client",
        &client_config(app, client_metrics, &servers),
        io,
    );
    let everything = || format!("client:\n{}\nserver:\n{}", client.log(), server.log());
    wait_listening(local(client_metrics), everything);
    transfer(app, 5);
    let deadline = Instant::now() + T;
    while live_tunnel_sessions(&scrape(metrics)).len() < POOL && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let sessions = live_tunnel_sessions(&scrape(metrics));
    assert_eq!(sessions.len(), POOL, "{}", everything());
    assert!(
        sessions.iter().all(|s| *s == sessions[0]),
        "one session: {sessions:?}"
    );
    let log = client.log();
    let moved = format!("server 127.0.0.1:{dead} unreachable");
    assert_eq!(log.matches(&moved).count(), 1, "said once:\n{log}");
    assert!(
        log.contains(&format!("trying server 127.0.0.1:{tunnel}")),
        "{log}"
    );
}

fn servers_list_kill(io: Driver) {
    let dir = TempDir::new(&format!("servers-kill-{}", io.name()));
    let leases: Vec<PortLease> = (0..6).map(|_| reserve_port()).collect();
    let [
        tunnel_a,
        tunnel_b,
        metrics_a,
        metrics_b,
        app,
        client_metrics,
    ] = [0, 1, 2, 3, 4, 5].map(|i| leases[i].port());
    let sink = backends::sink_backend();
    let servers = two_servers(
        &dir,
        [tunnel_a, tunnel_b],
        [metrics_a, metrics_b],
        sink,
        None,
        io,
    );
    let client = client_listing(&dir, [tunnel_a, tunnel_b], app, client_metrics, io);
    let everything = || {
        format!(
            "client:\n{}\nserver a:\n{}\nserver b:\n{}",
            client.log(),
            servers[0].log(),
            servers[1].log()
        )
    };
    wait_listening(local(client_metrics), everything);
    transfer(app, 7);
    let (first, _) = pool_on_one_server([metrics_a, metrics_b], everything);
    assert_eq!(first, 0, "the first server of the list serves first");

    servers[0].process.signal(9); // SIGKILL
    let (now_on, _) = pool_on_one_server([metrics_a, metrics_b], everything);
    assert_eq!(now_on, 1, "{}", everything());
    transfer(app, 8);
    let log = client.log();
    let moved = format!("server 127.0.0.1:{tunnel_a} unreachable");
    assert_eq!(log.matches(&moved).count(), 1, "said once:\n{log}");
}

fn servers_list_refused(io: Driver) {
    let dir = TempDir::new(&format!("servers-refused-{}", io.name()));
    let leases: Vec<PortLease> = (0..6).map(|_| reserve_port()).collect();
    let [
        tunnel_a,
        tunnel_b,
        metrics_a,
        metrics_b,
        app,
        client_metrics,
    ] = [0, 1, 2, 3, 4, 5].map(|i| leases[i].port());
    let sink = backends::sink_backend();
    let other_key = "a different key for the first server, 32 bytes+";
    let _servers = two_servers(
        &dir,
        [tunnel_a, tunnel_b],
        [metrics_a, metrics_b],
        sink,
        Some(other_key),
        io,
    );
    let client = client_listing(&dir, [tunnel_a, tunnel_b], app, client_metrics, io);
    wait_listening(local(client_metrics), || client.log());
    // At once: the first server is refusing the client about now.
    transfer(app, 9);
    let (on, _) = pool_on_one_server([metrics_a, metrics_b], || client.log());
    assert_eq!(on, 1, "{}", client.log());
    let log = client.log();
    assert!(
        log.contains(&format!("server 127.0.0.1:{tunnel_a} rejected our key"))
            && log.contains(&format!("trying server 127.0.0.1:{tunnel_b}")),
        "{log}"
    );
}
