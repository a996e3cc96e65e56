//! Many application sockets at once through the real `mtcpd` pair (issue 10 item 3): a burst
//! of connections to the client's listener is accepted in full, and every one carries a byte
//! there and back. Each test runs once per I/O driver (`…_mio`, `…_uring`). The io_uring
//! driver used to take one connection per turn of its loop (seconds for a few thousand); the
//! figure for 8,000 is `perf/scripts/socket-scale.sh`'s, not a timed assertion here.
//!
//! On mio, a read that does not fill the loop's buffer is taken to have emptied the socket (no
//! `WouldBlock` read per message); a FIN queued behind those bytes is then seen only through
//! the event's read-closed flag, which the FIN test below exercises in both directions.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use mtcpd_testkit::backends;
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::ports::{listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

/// Connections opened at once: well past the listener's backlog handled in one turn, well
/// inside the test process's descriptor limit (each also costs a backend descriptor here).
const CONNECTIONS: usize = 3000;
const KEY: &str = "scale-test-key-0123456789abcdef-0123456789";

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO`, logging warnings only (a line per connection would be noise).
fn start(dir: &TempDir, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .io(io)
        .log_filter("mtcpd=warn,mtcpd_engine=warn")
        .spawn()
}

fn wait_listening(addr: SocketAddr) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}"
    );
}

/// A client and server pair (pool 4) in front of an echo backend, both listening: their
/// directory (configs and logs; keep it until the daemons are gone), the client daemon, the
/// server daemon and the client's application address.
fn echo_pair(name: &str, io: Driver) -> (TempDir, Daemon, Daemon, SocketAddr) {
    let backend = backends::echo_backend();
    let dir = TempDir::new(name);
    let ports = [reserve_port(), reserve_port()];
    let (tunnel_port, app_port) = (ports[0].port(), ports[1].port());
    let server = format!(
        "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
         listen_port = {tunnel_port}\nbackend_ip = \"127.0.0.1\"\nbackend_port = {}\n\
         connection_pool_size = 4\n",
        backend.port()
    );
    let client = format!(
        "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\n\
         local_listen_port = {app_port}\nserver_ip = \"127.0.0.1\"\n\
         server_port = {tunnel_port}\nconnection_pool_size = 4\n"
    );
    let server = start(&dir, "server", "server", &server, io);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel_port)));
    let client = start(&dir, "client", "client", &client, io);
    let app = SocketAddr::from(([127, 0, 0, 1], app_port));
    wait_listening(app);
    (dir, client, server, app)
}

driver_tests! {
    /// 3,000 connections opened back to back are all accepted, and each echoes one byte
    /// (its own value, so crossed streams would show).
    #[within(150)]
    fn burst_of_connections_all_accepted_and_echo(io) {
        let (_dir, client, server, app) = echo_pair("scale", io);

        let mut conns = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let s = TcpStream::connect_timeout(&app, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
            conns.push(s);
        }
        for (i, s) in conns.iter_mut().enumerate() {
            s.write_all(&[i as u8]).expect("write one byte");
        }
        let mut echoed = 0;
        for (i, s) in conns.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            match s.read_exact(&mut b) {
                Ok(()) if b[0] == i as u8 => echoed += 1,
                other => panic!(
                    "connection {i} of {CONNECTIONS}: {other:?} (byte {}); {echoed} echoed before; \
                     client log:\n{}\nserver log:\n{}",
                    b[0],
                    client.log(),
                    server.log()
                ),
            }
        }
        assert_eq!(echoed, CONNECTIONS);
    }

    /// Connections that send their bytes and their FIN back to back (the client daemon reads
    /// both from one burst; the echo backend answers and half-closes just as fast, so the
    /// server daemon does too): every one gets its own bytes back, exactly, then end of
    /// stream. A FIN missed after a short read would leave a connection waiting forever.
    #[within(150)]
    fn data_then_fin_in_one_burst_echo_whole_then_end(io) {
        const N: usize = 400;
        let (_dir, client, server, app) = echo_pair("scale-fin", io);

        // Each connection's own message: its index, then a run of bytes of its own value.
        let message = |i: usize| -> Vec<u8> {
            let mut m = (i as u32).to_be_bytes().to_vec();
            m.extend(std::iter::repeat_n((i % 251) as u8, 60 + i % 200));
            m
        };
        let mut conns = Vec::with_capacity(N);
        for i in 0..N {
            let mut s = TcpStream::connect_timeout(&app, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            s.write_all(&message(i)).expect("write");
            s.shutdown(Shutdown::Write).expect("shutdown");
            conns.push(s);
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let mut got = Vec::new();
            if let Err(e) = s.read_to_end(&mut got) {
                panic!(
                    "connection {i} of {N}: {e} after {} bytes (no end of stream); client log:\n{}\n\
                     server log:\n{}",
                    got.len(),
                    client.log(),
                    server.log()
                );
            }
            assert_eq!(got, message(i), "connection {i}: not its own bytes back");
        }
    }
}
