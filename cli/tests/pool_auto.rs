//! The adaptive pool through the real binary, on both I/O drivers: a client with
//! `connection_pool_size = "auto"` opens `pool_min` tunnels, and a backlogged upload makes it
//! go to the busy start (8), one INFO line per change with its reason; every byte arrives intact
//! (SHA-256 and length checked by the sink backend), whatever tunnels were added or retired.
//! Idle again, it goes back to `pool_min`, and the server takes the retired tunnels' closes for
//! what they are (the client said so with TUNNEL_DRAIN): no "tunnel lost" warning.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::backends::{SinkReport, sink_backend};
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::driver_tests;
use mtcpd_testkit::pattern::{self, Checksum};
use mtcpd_testkit::ports::{listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;

const KEY: &str = "pool-auto-test-key-0123456789abcdef-01234";

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// Writes 1 MiB chunks to `conn` until `stop`, then half-closes; returns what was sent.
fn upload_until(
    mut conn: TcpStream,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> (Checksum, TcpStream) {
    let chunk = pattern::bytes(7, 1 << 20);
    let mut sent = Checksum::new();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        conn.write_all(&chunk)
            .expect("write to the client's forward");
        sent.update(&chunk);
    }
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    (sent, conn)
}

driver_tests! {
    #[within(120)]
    fn an_auto_pool_starts_small_logs_each_change_and_loses_no_byte(io) {
        let dir = TempDir::new("pool-auto");
        let (server_lease, app_lease) = (reserve_port(), reserve_port());
        let backend = sink_backend();
        let server_config = format!(
            "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
             listen_port = {}\nbackend_ip = \"127.0.0.1\"\nbackend_port = {}\n\
             connection_pool_size = 32\n",
            server_lease.port(),
            backend.port()
        );
        let server = Daemon::start(MTCPD, &dir, "server", "server", &server_config, io);
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_lease.port()));
        assert!(listening_within(server_addr, Duration::from_secs(20)), "{}", server.log());
        let client_config = format!(
            "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\n\
             local_listen_port = {}\nserver_ip = \"127.0.0.1\"\nserver_port = {}\n\
             connection_pool_size = \"auto\"\npool_min = 2\npool_max = 8\n",
            app_lease.port(),
            server_lease.port()
        );
        let client = Daemon::start(MTCPD, &dir, "client", "client", &client_config, io);
        let app = SocketAddr::from(([127, 0, 0, 1], app_lease.port()));
        assert!(listening_within(app, Duration::from_secs(20)), "{}", client.log());
        assert!(
            client.wait_for_log_count("tunnel established", 2, Duration::from_secs(10)),
            "{}",
            client.log()
        );
        // Idle: the pool stays at pool_min.
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(client.log().matches("tunnel established").count(), 2, "{}", client.log());
        assert!(!client.log().contains("adaptive pool:"), "{}", client.log());

        let conn = TcpStream::connect(app).expect("connect to the client's forward");
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let uploader = {
            let stop = stop.clone();
            thread::spawn(move || upload_until(conn, stop, Duration::from_secs(40)))
        };
        // Busy: straight to 8 (pool_max here, so it settles there without another line).
        let grew = client.wait_for_log("adaptive pool: growing from 2 to 8 tunnels", Duration::from_secs(30));
        stop.store(true, Ordering::SeqCst);
        let (sent, mut conn) = uploader.join().expect("uploader");
        let report = SinkReport::read_from(&mut conn).expect("the sink's report");
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        assert!(grew, "no growth logged\n{context}");
        assert_eq!((report.len, report.sha256), (sent.len(), sent.digest()), "{context}");
        assert!(!sent.is_empty());
        let log = client.log();
        let changes: Vec<&str> = log.lines().filter(|l| l.contains("adaptive pool:")).collect();
        eprintln!("{io}: {changes:#?}");
        for line in &changes {
            assert!(line.contains(" INFO "), "{line}");
            assert!(line.contains("tunnels: "), "a change states its reason: {line}");
        }
        assert!(client.log().matches("tunnel established").count() >= 8, "{context}");
        assert!(!client.log().contains(" WARN ") || !client.log().contains("tunnel lost"), "{context}");

        // Idle for 20 measuring windows (10 s on loopback): back to pool_min, 6 tunnels retire.
        let shrank = client.wait_for_log(
            "adaptive pool: shrinking from 8 to 2 tunnels: no data waiting",
            Duration::from_secs(30),
        );
        // The closes reach the server.
        thread::sleep(Duration::from_millis(500));
        let context = format!("{io}\n--- client\n{}\n--- server\n{}", client.log(), server.log());
        assert!(shrank, "no idle shrink logged\n{context}");
        assert!(!server.log().contains("tunnel lost"), "{context}");
        assert!(!client.log().contains("tunnel lost"), "{context}");
    }
}
