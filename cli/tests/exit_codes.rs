//! The exit statuses `--help` and docs/OPERATIONS.md promise, through the real binary: 0 for a
//! clean stop (also after a drain that had to cut streams), 1 for a runtime failure (a listen
//! port in use), 2 for a usage error, 78 for a configuration error, 130 when a second signal
//! cuts the drain short. The daemon cases run on both I/O drivers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mtcpd::exit_code;
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::ports::reserve_port;
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};
use signal_hook::consts::SIGTERM;

const KEY: &str = "exit-codes-test-key-0123456789abcdef-0123";

fn status_of(arguments: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
        .args(arguments)
        .env_remove("MTCPD_CONFIG")
        .env_remove("MTCPD_IO")
        .output()
        .expect("run mtcpd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn code(value: u8) -> Option<i32> {
    Some(i32::from(value))
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn commands_exit_0_2_or_78() {
    let dir = TempDir::new("exit");
    let good = dir.file("good.toml", "mode = \"server\"\n[server]\n");
    assert_eq!(
        status_of(&["check", "-c", arg(&good)]).0,
        code(exit_code::SUCCESS)
    );
    for usage in [
        &["--no-such-flag"][..],
        &["check", "--role", "neither"][..],
        &["server", "--role", "client"][..],
    ] {
        assert_eq!(status_of(usage).0, code(exit_code::USAGE), "{usage:?}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
        .arg("--help")
        .output()
        .expect("run mtcpd --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for documented in [
        "Exit status",
        "  0 ",
        "  1 ",
        "  2 ",
        "  78 ",
        "EX_CONFIG",
        "  130 ",
    ] {
        assert!(
            help.contains(documented),
            "--help lacks {documented:?}:\n{help}"
        );
    }
    let bad_value = dir.file("bad.toml", "mode = \"server\"\n[server]\nlisten_port = 0\n");
    let bad_pool = dir.file(
        "pool.toml",
        "mode = \"client\"\n[client]\nlocal_listen_port = 1\nconnection_pool_size = \"many\"\n",
    );
    let bad_syntax = dir.file("syntax.toml", "[server\n");
    let missing = dir.0.join("missing.toml");
    for config in [&bad_value, &bad_syntax, &missing, &bad_pool] {
        for command in [
            "check",
            if config == &bad_pool {
                "client"
            } else {
                "server"
            },
        ] {
            let (status, stderr) = status_of(&[command, "-c", arg(config)]);
            assert_eq!(
                status,
                code(exit_code::CONFIG),
                "{command} {config:?}: {stderr}"
            );
        }
    }
}

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO`, with no `MTCPD_CONFIG` from the caller's environment.
fn start(dir: &TempDir, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .io(io)
        .env_remove("MTCPD_CONFIG")
        .spawn()
}

/// The exit code, within 20 s.
fn code_of(daemon: &mut Daemon) -> Option<i32> {
    let status = daemon
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("did not exit; log:\n{}", daemon.log()));
    status.code()
}

fn server_config(port: u16, backend: SocketAddr, drain: &str) -> String {
    format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
         listen_port = {port}\nbackend_ip = \"127.0.0.1\"\nbackend_port = {}\n\
         connection_pool_size = 2\n[limits]\ndrain_timeout = \"{drain}\"\n",
        backend.port()
    )
}

fn client_config(app: u16, server: u16, drain: &str) -> String {
    format!(
        "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\n\
         local_listen_port = {app}\nserver_ip = \"127.0.0.1\"\nserver_port = {server}\n\
         connection_pool_size = 2\n[limits]\ndrain_timeout = \"{drain}\"\n"
    )
}

fn connect(port: u16, daemon: &Daemon) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {port}; log:\n{}", daemon.log());
}

/// An application connection through the pair, echoed once, then left open: a stream the
/// drain can only cut.
fn open_stream(app_port: u16, client: &Daemon) -> TcpStream {
    let mut app = connect(app_port, client);
    app.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    app.write_all(b"ping").expect("write");
    let mut echoed = [0u8; 4];
    app.read_exact(&mut echoed)
        .unwrap_or_else(|e| panic!("no echo ({e}); client log:\n{}", client.log()));
    assert_eq!(&echoed, b"ping");
    app
}

fn wait_for(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

driver_tests! {
    /// Exit 1: something else already serves the listen port.
    #[within(60)]
    fn a_listen_port_in_use_exits_1(io) {
        let dir = TempDir::new("exit");
        let lease = reserve_port();
        let _other = TcpListener::bind(("127.0.0.1", lease.port())).expect("bind");
        let backend = mtcpd_testkit::backends::echo_backend();
        let mut server =
            start(&dir, "s", "server", &server_config(lease.port(), backend, "1s"), io);
        assert_eq!(code_of(&mut server), code(exit_code::FAILURE), "{io}: {}", server.log());
        assert!(server.log().contains("already in use"), "{io}: {}", server.log());
    }

    /// SIGTERM drains and exits 0, also when drain_timeout ran out and a stream was cut (a
    /// warning says so); a second signal during a drain exits 130 at once.
    #[within(90)]
    fn sigterm_exits_0_after_the_drain_and_a_second_signal_exits_130(io) {
        let dir = TempDir::new("exit");
        let server_lease = reserve_port();
        let app_lease = reserve_port();
        let backend = mtcpd_testkit::backends::echo_backend();
        let server_text = server_config(server_lease.port(), backend, "1s");
        let mut server = start(&dir, "s", "server", &server_text, io);
        let client_text = client_config(app_lease.port(), server_lease.port(), "1s");
        let mut client = start(&dir, "c1", "client", &client_text, io);
        let app = open_stream(app_lease.port(), &client);
        client.process.signal(SIGTERM);
        assert_eq!(code_of(&mut client), code(exit_code::SUCCESS), "{io}: {}", client.log());
        assert!(client.log().contains("streams were reset"), "{io}: {}", client.log());
        drop(app);

        // A long drain, cut short by a second signal.
        let client_text = client_config(app_lease.port(), server_lease.port(), "5m");
        let mut client = start(&dir, "c2", "client", &client_text, io);
        let _app = open_stream(app_lease.port(), &client);
        client.process.signal(SIGTERM);
        wait_for(&client, "draining");
        client.process.signal(SIGTERM);
        assert_eq!(code_of(&mut client), code(exit_code::INTERRUPTED), "{io}: {}", client.log());

        server.process.signal(SIGTERM);
        assert_eq!(code_of(&mut server), code(exit_code::SUCCESS), "{io}: {}", server.log());
    }
}
