//! SIGHUP, through the real `mtcpd` binary on loopback, on both I/O drivers: the daemon
//! re-reads its config file and applies what can change safely — a client's forwards added
//! (they carry bytes) and removed (the port refuses connections; a stream already open over it
//! keeps working), a server's `[[server.forward]]` targets and `allow` list (new streams judged
//! by the new lists), `log_level` — refuses a broken file whole (and keeps serving), and
//! refuses a psk change with the "restart needed" line while still applying the rest.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::pattern::{read_to_end_checksum, write_pattern};
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const KEY: &str = "reload-test-key-0123456789abcdef-0123456789";
const OTHER_KEY: &str = "reload-test-key-another-one-0123456789abcdef";
const SIGHUP: i32 = 1;

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// Rewrites the config file, sends SIGHUP and waits for the reload's summary line (or its
/// refusal); the new log text since the signal.
fn reload(daemon: &Daemon, config: &str, expect: &str) -> String {
    std::fs::write(daemon.config_path(), config).expect("rewrite config");
    let before = daemon.log().len();
    daemon.signal(SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let log = daemon.log();
        if log[before..].contains(expect) {
            return log[before..].to_owned();
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("no {expect:?} after SIGHUP; log:\n{}", daemon.log());
}

fn server_config(port: u16, backend: SocketAddr, extra: &str) -> String {
    format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
         listen_port = {port}\nbackend_ip = \"127.0.0.1\"\nbackend_port = {}\n\
         connection_pool_size = 2\n{extra}",
        backend.port()
    )
}

fn client_config(key: &str, server: u16, forwards: &[(&str, u16, Option<SocketAddr>)]) -> String {
    let mut text = format!(
        "mode = \"client\"\npsk = \"{key}\"\n[client]\nserver_ip = \"127.0.0.1\"\n\
         server_port = {server}\nconnection_pool_size = 2\n"
    );
    for (name, port, target) in forwards {
        text.push_str(&format!(
            "\n[[client.forward]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n"
        ));
        if let Some(target) = target {
            text.push_str(&format!("target = \"{target}\"\n"));
        }
    }
    text
}

fn wait_listening(addr: SocketAddr, daemon: &Daemon) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}; log:\n{}",
        daemon.log()
    );
}

/// An echo backend on a port of its own.
fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("backend");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                mtcpd_testkit::backends::echo(conn);
            });
        }
    });
    addr
}

/// The client's `/metrics` text.
fn scrape(port: u16) -> String {
    let mut conn = TcpStream::connect(app(port)).expect("metrics endpoint");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// A connection through `port` whose target the server refuses: nothing comes back.
fn assert_refused(port: u16) {
    let mut conn = TcpStream::connect(app(port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = conn.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(
        !matches!(conn.read(&mut buf), Ok(n) if n > 0),
        "a target the server does not list was reached"
    );
}

fn app(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One round trip of `data` over an open connection to an echo.
fn round_trip(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).expect("write");
    let mut got = vec![0u8; data.len()];
    conn.read_exact(&mut got).expect("echo");
    assert_eq!(got, data);
}

/// A connection through `port` to an echo, checked with one round trip.
fn echo_conn(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(app(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    round_trip(&mut s, b"ping");
    s
}

/// `total` bytes through `port` to an echo and back, compared by SHA-256.
fn checksum_through(port: u16, total: u64) {
    let conn = TcpStream::connect(app(port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let sent = write_pattern(&mut writer, 7, total).expect("send");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        sent
    });
    let mut reader = conn;
    let received = read_to_end_checksum(&mut reader).expect("receive");
    let sent = sender.join().expect("sender");
    assert_eq!(received.len(), total);
    assert_eq!(received.digest(), sent, "bytes differ");
}

/// A server on its own port with an echo as default backend.
fn start_server(dir: &TempDir, io: Driver, extra: &str) -> (Daemon, PortLease, SocketAddr) {
    let lease = reserve_port();
    let backend = echo_backend();
    let config = server_config(lease.port(), backend, extra);
    let server = Daemon::start(MTCPD, dir, "server", "server", &config, io);
    wait_listening(app(lease.port()), &server);
    (server, lease, backend)
}

driver_tests! {
    /// A forward added by SIGHUP carries bytes; a removed one refuses new connections while a
    /// stream already open over it keeps working; the summary line counts both.
    #[within(90)]
    fn sighup_adds_and_removes_client_forwards(io) {
        let dir = TempDir::new("reload");
        let (_server, server_port, _) = start_server(&dir, io, "");
        let (kept, removed, added) = (reserve_port(), reserve_port(), reserve_port());
        let metrics = reserve_port();
        // Two workers: every worker's listener copy is added and removed.
        let top = format!("mode = \"client\"\ncores = 2\nmetrics_listen = \"127.0.0.1:{}\"\n", metrics.port());
        let before = client_config(
            KEY,
            server_port.port(),
            &[("kept", kept.port(), None), ("old", removed.port(), None)],
        )
        .replacen("mode = \"client\"\n", &top, 1);
        let client = Daemon::start(MTCPD, &dir, "client", "client", &before, io);
        wait_listening(app(removed.port()), &client);
        let mut open = echo_conn(removed.port());

        let after = client_config(
            KEY,
            server_port.port(),
            &[("kept", kept.port(), None), ("new", added.port(), None)],
        )
        .replacen("mode = \"client\"\n", &top, 1);
        let said = reload(&client, &after, "reload: applied");
        assert!(said.contains("reload: applied 2 changes"), "{said}");
        assert!(said.contains("refused 0"), "{said}");

        checksum_through(added.port(), 4 << 20);
        match TcpStream::connect(app(removed.port())) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
            Ok(_) => panic!("the removed forward still accepts; log:\n{}", client.log()),
        }
        round_trip(&mut open, b"still carried after the reload");
        drop(open);
        echo_conn(kept.port());
        // The new forward has its own metrics series, with the bytes it carried.
        let scraped = scrape(metrics.port());
        assert!(
            scraped.contains("mtcpd_forward_bytes_total{forward=\"new\",direction=\"to_peer\"} 4194304\n"),
            "{scraped}"
        );
        // The removed forward keeps its series: the probe of wait_listening and the stream
        // that stayed open, with its bytes from before and after the reload.
        assert!(
            scraped.contains("mtcpd_forward_connections_total{forward=\"old\"} 2\n"),
            "{scraped}"
        );
        assert!(
            scraped.contains("mtcpd_forward_bytes_total{forward=\"old\",direction=\"to_peer\"} 34\n"),
            "{scraped}"
        );
    }

    /// A file that does not load is refused whole (one WARN naming the file) and the daemon
    /// keeps serving; a psk change is refused with the restart line, and a forward on a port in
    /// use is refused alone, while a forward added in the same file is applied.
    #[within(90)]
    fn sighup_refuses_a_broken_file_and_a_psk_change(io) {
        let dir = TempDir::new("reload");
        let (_server, server_port, _) = start_server(&dir, io, "");
        let (first, second) = (reserve_port(), reserve_port());
        let config = client_config(KEY, server_port.port(), &[("first", first.port(), None)]);
        let client = Daemon::start(MTCPD, &dir, "client", "client", &config, io);
        wait_listening(app(first.port()), &client);
        echo_conn(first.port());

        let said = reload(&client, "mode = \"client\"\n[client\n", "reload refused");
        let file = client.config_path().display().to_string();
        let refusal = said.lines().find(|l| l.contains("reload refused")).expect("line");
        assert!(refusal.contains(" WARN "), "{refusal}");
        assert!(refusal.contains(&file), "{refusal}");
        echo_conn(first.port());

        // Another program serves this port: that forward alone is refused.
        let busy = TcpListener::bind("127.0.0.1:0").expect("busy port");
        let busy_port = busy.local_addr().expect("addr").port();
        let changed = client_config(
            OTHER_KEY,
            server_port.port(),
            &[
                ("first", first.port(), None),
                ("second", second.port(), None),
                ("busy", busy_port, None),
            ],
        );
        let said = reload(&client, &changed, "reload: applied");
        assert!(said.contains("reload: psk changed; restart needed to apply it"), "{said}");
        assert!(said.contains("reload: applied 1 changes"), "{said}");
        assert!(
            said.contains(&format!("refused 2 (psk, listener 127.0.0.1:{busy_port} (")),
            "{said}"
        );
        assert!(said.contains("already in use"), "{said}");
        // The old key still runs the tunnels: both forwards carry bytes.
        echo_conn(first.port());
        checksum_through(second.port(), 1 << 20);
    }

    /// The server's `[[server.forward]]` list and `[server] allow` reload: targets refused
    /// before are reached by new streams after SIGHUP (the answers cached for them are
    /// forgotten); `log_level` reloads too.
    #[within(90)]
    fn sighup_changes_the_servers_target_and_allow_lists(io) {
        let dir = TempDir::new("reload");
        let (listed_target, dynamic_target) = (echo_backend(), echo_backend());
        let (server, server_port, backend) = start_server(&dir, io, "");
        let (listed, dynamic) = (reserve_port(), reserve_port());
        let config = client_config(
            KEY,
            server_port.port(),
            &[
                ("listed", listed.port(), Some(listed_target)),
                ("dynamic", dynamic.port(), Some(dynamic_target)),
            ],
        );
        let client = Daemon::start(MTCPD, &dir, "client", "client", &config, io);
        wait_listening(app(listed.port()), &client);
        // In neither list: refused (reset), nothing echoed.
        for port in [listed.port(), dynamic.port()] {
            assert_refused(port);
        }

        let lists = server_config(
            server_port.port(),
            backend,
            &format!(
                "allow = [\"{dynamic_target}\"]\n\n[[server.forward]]\nname = \"listed\"\n\
                 target = \"{listed_target}\"\n"
            ),
        );
        let lists = lists.replacen(
            "mode = \"server\"\n",
            "mode = \"server\"\nlog_level = \"debug\"\n",
            1,
        );
        assert!(!server.log().contains(" DEBUG "), "info until the reload");
        let said = reload(&server, &lists, "reload: applied");
        assert!(
            said.contains("reload: applied 3 changes ([[server.forward]], server.allow, log_level)"),
            "{said}"
        );
        echo_conn(listed.port());
        echo_conn(dynamic.port());
        assert!(server.log().contains(" DEBUG "), "log_level = debug applied");
    }
}
