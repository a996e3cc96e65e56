//! Reverse tunnels end to end through the real `mtcpd` binary on loopback: a user → the
//! server's reverse listener → a stream the server opens → the client → the service the client
//! exposes. On both I/O drivers (`driver_tests!`); processes stopped and files removed even when
//! a test fails; every wait bounded.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::backends;
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::pattern::{self, Checksum};
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const IO_TIMEOUT: Duration = Duration::from_secs(60);
const KEY: &str = "e2e-reverse-test-key-0123456789abcdef-01234";

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO` at info level.
fn start_daemon(dir: &TempDir, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .io(io)
        .log_filter("mtcpd=info,mtcpd_engine=info")
        .spawn()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A server with a default backend and the reverse listeners `reverse` (name, port, mode).
fn server_config(tunnel_port: u16, backend: SocketAddr, reverse: &[(&str, u16, &str)]) -> String {
    let mut toml = format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
         listen_port = {tunnel_port}\nbackend_ip = \"{}\"\nbackend_port = {}\n\
         connection_pool_size = 4\n",
        backend.ip(),
        backend.port()
    );
    for (name, port, when_absent) in reverse {
        toml += &format!(
            "[[server.reverse]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n\
             when_absent = \"{when_absent}\"\n"
        );
    }
    toml + "[limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n"
}

/// A client of `tunnel_port` exposing `exposed` (name, target), with a forward on `app_port`
/// when given.
fn client_config(
    tunnel_port: u16,
    app_port: Option<u16>,
    exposed: &[(&str, SocketAddr)],
) -> String {
    let mut toml = format!(
        "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nserver_ip = \"127.0.0.1\"\n\
         server_port = {tunnel_port}\nconnection_pool_size = 4\n"
    );
    if let Some(port) = app_port {
        toml += &format!("local_listen_ip = \"127.0.0.1\"\nlocal_listen_port = {port}\n");
    }
    for (name, target) in exposed {
        toml += &format!("[[client.expose]]\nname = \"{name}\"\ntarget = \"{target}\"\n");
    }
    toml + "[limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n\
            redial_backoff_min = \"50ms\"\nredial_backoff_max = \"500ms\"\ndrain_timeout = \"2s\"\n"
}

/// Waits up to 20 s until `addr` accepts a connection.
fn wait_listening(addr: SocketAddr, what: &str, logs: &dyn Fn() -> String) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "{what} never listened on {addr}; logs:\n{}",
        logs()
    );
}

/// Waits up to 20 s until connecting to `addr` is refused (nothing listens).
fn wait_refused(addr: SocketAddr, what: &str, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!(
        "{what}: {addr} still accepts connections; logs:\n{}",
        logs()
    );
}

/// A connection the far end resets (or closes) without a byte: what a reverse listener in
/// `reset` mode does while no client exposes its name.
fn assert_reset_without_data(addr: SocketAddr, logs: &dyn Fn() -> String) {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        // The reset can come before the connect has been seen to complete.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
        Err(e) => panic!("connect {addr}: {e}; logs:\n{}", logs()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{addr}: expected a reset, got {other:?}; logs:\n{}", logs()),
    }
}

/// Sends `total` pattern bytes through `addr` to an echo service and reads them back at the
/// same time; asserts both directions byte-exact (SHA-256) and returns the seconds taken.
fn echo_through(addr: SocketAddr, total: u64, seed: u64, logs: &dyn Fn() -> String) -> f64 {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let started = Instant::now();
    let mut reader = s.try_clone().expect("clone");
    let receiver = thread::spawn(move || pattern::read_to_end_checksum(&mut reader));
    let mut writer = s;
    let sent = pattern::write_pattern(&mut writer, seed, total).expect("write");
    writer.shutdown(Shutdown::Write).expect("half-close");
    let echoed: Checksum = receiver
        .join()
        .expect("receiver")
        .unwrap_or_else(|e| panic!("read back: {e}; logs:\n{}", logs()));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(echoed.len(), total, "logs:\n{}", logs());
    assert_eq!(sent, echoed.digest(), "sha256 differs");
    secs
}

/// A server and a client, with their ports.
struct Setup {
    dir: TempDir,
    server: Daemon,
    client: Option<Daemon>,
    tunnel_port: u16,
    _ports: Vec<PortLease>,
}

impl Setup {
    fn logs(&self) -> String {
        format!(
            "--- server\n{}\n--- client\n{}",
            self.server.log(),
            self.client.as_ref().map(Daemon::log).unwrap_or_default()
        )
    }
}

fn start_server(
    io: Driver,
    backend: SocketAddr,
    reverse: &[(&str, u16, &str)],
    ports: Vec<PortLease>,
) -> Setup {
    let dir = TempDir::new("reverse");
    let tunnel_port = reserve_port();
    let port = tunnel_port.port();
    let server = start_daemon(
        &dir,
        "server",
        "server",
        &server_config(port, backend, reverse),
        io,
    );
    wait_listening(local(port), "server", &|| server.log());
    let mut ports = ports;
    ports.push(tunnel_port);
    Setup {
        dir,
        server,
        client: None,
        tunnel_port: port,
        _ports: ports,
    }
}

driver_tests! {
    /// 64 MiB each way through a reverse tunnel (echoed by the client's service), then the same
    /// through a forward of the same pair, timed side by side.
    #[within(120)]
    fn reverse_tunnel_carries_64_mib_both_ways_byte_exact(io) {
        let service = backends::echo_backend();
        let forward_backend = backends::echo_backend();
        let (web, app) = (reserve_port(), reserve_port());
        let (web_port, app_port) = (web.port(), app.port());
        let mut setup = start_server(io, forward_backend, &[("web", web_port, "close")], vec![web, app]);
        let config = client_config(setup.tunnel_port, Some(app_port), &[("web", service)]);
        setup.client = Some(start_daemon(&setup.dir, "client", "client", &config, io));
        let logs = || setup.logs();
        wait_listening(local(web_port), "the reverse listener", &logs);
        wait_listening(local(app_port), "the client's forward", &logs);
        const TOTAL: u64 = 64 << 20;
        // MTCPD_REVERSE_ROUNDS=n measures n rounds, alternating which goes first (default 1).
        let rounds: u64 = std::env::var("MTCPD_REVERSE_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
        let rate = |secs: f64| (TOTAL * 8) as f64 / secs / 1e9;
        let (mut reverse, mut forward) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let order = if round % 2 == 0 { [true, false] } else { [false, true] };
            for is_reverse in order {
                let (addr, into) = if is_reverse { (web_port, &mut reverse) } else { (app_port, &mut forward) };
                into.push(rate(echo_through(local(addr), TOTAL, round * 2 + u64::from(is_reverse), &logs)));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        eprintln!(
            "{io}: 64 MiB each way at once, Gbit/s per direction: reverse {reverse:.2?} (median {:.2}), forward {forward:.2?} (median {:.2})",
            median(&mut reverse.clone()), median(&mut forward.clone())
        );
        let server_log = setup.server.log();
        assert!(server_log.contains("reverse stream opened"), "{}", logs());
        assert!(server_log.contains("the client exposes the service"), "{}", logs());
    }

    /// Nobody exposes the names: a `close` listener is not there, a `reset` one resets. A
    /// client exposing one name opens only that one; when it goes the listener closes, and it
    /// comes back with the next client.
    #[within(120)]
    fn a_reverse_listener_with_no_client_and_the_client_coming_back(io) {
        let service = backends::echo_backend();
        let (web, ssh) = (reserve_port(), reserve_port());
        let (web_port, ssh_port) = (web.port(), ssh.port());
        let mut setup = start_server(
            io,
            backends::echo_backend(),
            &[("web", web_port, "close"), ("ssh", ssh_port, "reset")],
            vec![web, ssh],
        );
        {
            let logs = || setup.logs();
            // The tunnel port is bound before the workers start; the reverse ones by worker 0.
            wait_listening(local(ssh_port), "reset mode with no client", &logs);
            wait_refused(local(web_port), "close mode with no client", &logs);
            assert_reset_without_data(local(ssh_port), &logs);
        }
        for round in 0..2 {
            let config = client_config(setup.tunnel_port, None, &[("web", service)]);
            setup.client = Some(start_daemon(&setup.dir, &format!("client{round}"), "client", &config, io));
            let logs = || setup.logs();
            wait_listening(local(web_port), "the reverse listener", &logs);
            echo_through(local(web_port), 1 << 20, round, &logs);
            // The client does not expose "ssh": still reset.
            assert_reset_without_data(local(ssh_port), &logs);
            let mut client = setup.client.take().expect("client");
            assert!(client.process.terminate(Duration::from_secs(10)).is_some());
            setup.client = Some(client);
            wait_refused(local(web_port), "the client has gone", &|| setup.logs());
        }
        assert!(setup.server.log().contains("reverse listener closed"), "{}", setup.logs());
    }

    /// A server that names a reverse listener the client does not expose never reaches the
    /// client's services; and a client that exposes a name the server does not configure makes
    /// it listen on nothing new.
    #[within(60)]
    fn names_not_on_both_ends_connect_nothing(io) {
        let service = backends::echo_backend();
        let (web, db) = (reserve_port(), reserve_port());
        let (web_port, db_port) = (web.port(), db.port());
        let mut setup = start_server(
            io,
            backends::echo_backend(),
            &[("web", web_port, "close"), ("db", db_port, "reset")],
            vec![web, db],
        );
        let config = client_config(setup.tunnel_port, None, &[("web", service), ("mail", service)]);
        setup.client = Some(start_daemon(&setup.dir, "client", "client", &config, io));
        let logs = || setup.logs();
        wait_listening(local(web_port), "the reverse listener", &logs);
        assert_reset_without_data(local(db_port), &logs);
        echo_through(local(web_port), 4096, 5, &logs);
        assert!(
            setup.server.log().contains("no [[server.reverse]] names: ignored"),
            "{}",
            logs()
        );
        assert!(!setup.client.as_ref().unwrap().log().contains("does not expose"), "{}", logs());
    }
}

/// Reverse tunnels need a key on both ends: `mtcpd check` refuses either table without one.
#[test]
fn reverse_tables_without_a_key_are_refused() {
    let dir = TempDir::new("reverse");
    let cases = [
        (
            "server",
            "mode = \"server\"\n[server]\n[[server.reverse]]\nname = \"web\"\nlisten = \"127.0.0.1:6000\"\n",
            "server.reverse",
        ),
        (
            "client",
            "mode = \"client\"\n[client]\n[[client.expose]]\nname = \"web\"\ntarget = \"127.0.0.1:8080\"\n",
            "client.expose",
        ),
    ];
    for (role, toml, key) in cases {
        let path = dir.0.join(format!("{role}.toml"));
        std::fs::write(&path, toml).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("mtcpd check");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role}: {text}");
        assert!(
            text.contains(key) && text.contains("need a key"),
            "{role}: {text}"
        );
    }
}
