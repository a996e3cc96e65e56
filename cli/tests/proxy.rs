//! The client's SOCKS5 and HTTP proxy listeners and the server's allow-list, end to end through
//! the real `mtcpd` binary on loopback, with `curl` as the application (both drivers:
//! `driver_tests!`): fetches by name byte for byte (SOCKS5, HTTP GET, HTTPS through CONNECT to
//! `openssl s_server`), and each refusal with its protocol's own reply (SOCKS5 REP, HTTP
//! status). Tests that need `curl` or `openssl` say so and pass without them only when
//! `MTCPD_TESTS_ALLOW_SKIP` is set (`.ci/run` installs both).
//!
//! `bench_socks5_vs_forward` (ignored; `--run-ignored only`) measures one stream through the
//! SOCKS5 listener against a plain forward, alternating, and prints medians.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::pattern;
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::process::ChildGuard;
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const KEY: &str = "proxy-test-key-0123456789abcdef-0123456789";
/// The body every test HTTP server sends, and its pattern seed.
const BODY: u64 = 4 << 20;
const SEED: u64 = 12;

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd ROLE -c CONFIG --io IO` at info level.
fn start_daemon(dir: &Path, name: &str, role: &str, config: &str, io: Driver) -> Daemon {
    Daemon::launch(MTCPD, dir, name, role, config)
        .io(io)
        .log_filter("mtcpd=info,mtcpd_engine=info")
        .spawn()
}

fn wait_listening(addr: SocketAddr, what: &str, log: impl Fn() -> String) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "{what} never listened on {addr}; log:\n{}",
        log()
    );
}

/// True when `tool` runs; otherwise the test may only be skipped where that is allowed.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("MTCPD_TESTS_ALLOW_SKIP").is_some(),
            "{tool} is needed by this test (.ci/run installs it); set MTCPD_TESTS_ALLOW_SKIP to skip"
        );
        eprintln!("{tool} not found: skipped");
    }
    found
}

/// A plain HTTP/1.1 server on 127.0.0.1 answering every request with the pattern body.
fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || serve_one(conn));
        }
    });
    addr
}

fn serve_one(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    // The proxy must have rewritten the request to origin-form.
    let status = if head.starts_with(b"GET /") {
        "200 OK"
    } else {
        "400 Bad Request"
    };
    let len = if status == "200 OK" { BODY } else { 0 };
    let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    if conn.write_all(reply.as_bytes()).is_ok() && len > 0 {
        let _ = pattern::write_pattern(&mut conn, SEED, len);
    }
}

fn expected_digest() -> [u8; 32] {
    pattern::write_pattern(&mut std::io::sink(), SEED, BODY).expect("pattern")
}

/// `curl ARGS`, with its exit code, stdout and stderr.
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = ChildGuard::spawn(
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .expect("curl")
    .output_within(Duration::from_secs(30))
    .expect("curl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A SOCKS5 CONNECT by name, done by hand: the REP byte the client answered.
fn socks5_rep(proxy: SocketAddr, host: &str, port: u16, auth: Option<(&str, &str)>) -> u8 {
    let mut s = TcpStream::connect(proxy).expect("connect proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let method = if auth.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, method]);
    if let Some((user, pass)) = auth {
        let mut msg = vec![1, user.len() as u8];
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        s.write_all(&msg).unwrap();
        s.read_exact(&mut reply).unwrap();
        if reply != [1, 0] {
            return 0xFF;
        }
    }
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).expect("SOCKS5 reply");
    rep[1]
}

/// The server (with `allow`) and a client with a SOCKS5 listener, one with a password, and an
/// HTTP proxy.
struct Setup {
    dir: TempDir,
    server: Daemon,
    client: Daemon,
    socks: SocketAddr,
    socks_auth: SocketAddr,
    http: SocketAddr,
    _leases: Vec<PortLease>,
}

fn setup(io: Driver, allow: &[String]) -> Setup {
    let dir = TempDir::new("proxy");
    let leases: Vec<PortLease> = (0..4).map(|_| reserve_port()).collect();
    let tunnel = leases[0].port();
    let addr = |l: &PortLease| SocketAddr::from(([127, 0, 0, 1], l.port()));
    let (socks, socks_auth, http) = (addr(&leases[1]), addr(&leases[2]), addr(&leases[3]));
    let allow: Vec<String> = allow.iter().map(|r| format!("\"{r}\"")).collect();
    let server = start_daemon(
        &dir.0,
        "server",
        "server",
        &format!(
            "psk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {tunnel}\n\
             allow = [{}]\n",
            allow.join(", ")
        ),
        io,
    );
    wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel)), "server", || {
        server.log()
    });
    let client = start_daemon(
        &dir.0,
        "client",
        "client",
        &format!(
            "psk = \"{KEY}\"\n[client]\nserver_ip = \"127.0.0.1\"\nserver_port = {tunnel}\n\
             [[client.socks5]]\nlisten = \"{socks}\"\n\
             [[client.socks5]]\nlisten = \"{socks_auth}\"\nusername = \"alice\"\npassword = \"s3cret\"\n\
             [[client.http_proxy]]\nlisten = \"{http}\"\n"
        ),
        io,
    );
    for (a, what) in [
        (socks, "socks5"),
        (socks_auth, "socks5 auth"),
        (http, "http proxy"),
    ] {
        wait_listening(a, what, || client.log());
    }
    Setup {
        dir,
        server,
        client,
        socks,
        socks_auth,
        http,
        _leases: leases,
    }
}

impl Setup {
    fn logs(&self) -> String {
        format!(
            "--- server\n{}\n--- client\n{}",
            self.server.log(),
            self.client.log()
        )
    }

    /// curl's download of `url` through `proxy_args`, checked byte for byte.
    fn fetch(&self, what: &str, args: &[&str]) {
        let out = self.dir.0.join(format!("{what}.out"));
        let out_text = out.to_string_lossy().into_owned();
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", &out_text]);
        let (code, _, err) = curl(&all);
        assert_eq!(
            code,
            0,
            "{what}: curl {all:?} failed: {err}\n{}",
            self.logs()
        );
        let body = std::fs::read(&out).expect("curl output");
        assert_eq!(body.len() as u64, BODY, "{what}: length");
        assert!(
            pattern::sha256(&body) == expected_digest(),
            "{what}: body differs"
        );
        println!(
            "{what}: curl {} -> {} bytes, sha256 matches",
            args.join(" "),
            body.len()
        );
    }
}

driver_tests! {
    /// curl through the SOCKS5 listener (`--socks5-hostname`, the name resolved by the server)
    /// and the HTTP proxy (`GET http://…`, and `https://` through CONNECT to openssl s_server)
    /// to test servers by name, byte for byte.
    #[within(120)]
    fn curl_fetches_by_name_through_both_proxies(io) {
        if !have("curl") {
            return;
        }
        let origin = http_server();
        let tls = TlsServer::start();
        let mut allow = vec![format!("127.0.0.1:{}", origin.port())];
        if let Some(tls) = &tls {
            allow.push(format!("127.0.0.1:{}", tls.port));
        }
        let s = setup(io, &allow);
        let url = format!("http://localhost:{}/file", origin.port());
        let socks = format!("{}", s.socks);
        s.fetch("socks5", &["--socks5-hostname", &socks, &url]);
        let socks_auth = format!("alice:s3cret@{}", s.socks_auth);
        s.fetch("socks5-auth", &["--socks5-hostname", &socks_auth, &url]);
        let http = format!("http://{}", s.http);
        s.fetch("http-get", &["-x", &http, &url]);
        if let Some(tls) = &tls {
            let https = format!("https://localhost:{}/body.bin", tls.port);
            s.fetch("https-connect", &["-k", "-x", &http, &https]);
        }
        assert!(s.client.log().contains("stream opened by proxy request"));
    }
}

driver_tests! {
    /// Refusals get their protocol's reply: a target the allow-list does not allow (REP 0x02,
    /// 403), a closed port (REP 0x05, 502), a name the server cannot resolve (REP 0x04, 502),
    /// a name whose address no rule allows (REP 0x02), a wrong password (RFC 1929 failure).
    #[within(120)]
    fn refusals_get_their_protocol_replies(io) {
        let origin = http_server();
        let closed = reserve_port();
        let hidden = http_server();
        let allow = [
            format!("127.0.0.1:{}", origin.port()),
            format!("127.0.0.1:{}", closed.port()),
            // A name rule alone does not reach loopback: localhost stays refused here.
            format!("localhost:{}", hidden.port()),
            "*.invalid:1-65535".to_owned(),
        ];
        let s = setup(io, &allow);
        let logs = || s.logs();
        assert_eq!(socks5_rep(s.socks, "localhost", origin.port(), None), 0x00, "{}", logs());
        assert_eq!(socks5_rep(s.socks, "127.0.0.1", 1, None), 0x02, "not allowed: {}", logs());
        assert_eq!(socks5_rep(s.socks, "localhost", closed.port(), None), 0x05, "closed: {}", logs());
        assert_eq!(socks5_rep(s.socks, "localhost", hidden.port(), None), 0x02, "by name: {}", logs());
        assert_eq!(socks5_rep(s.socks, "no-such-host.invalid", 80, None), 0x04, "dns: {}", logs());
        assert_eq!(
            socks5_rep(s.socks_auth, "localhost", origin.port(), Some(("alice", "wrong"))),
            0xFF,
            "wrong password"
        );
        assert_eq!(
            socks5_rep(s.socks_auth, "localhost", origin.port(), Some(("alice", "s3cret"))),
            0x00
        );
        if !have("curl") {
            return;
        }
        let http = format!("http://{}", s.http);
        let status = |url: &str, extra: &[&str]| {
            let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-x", &http];
            args.extend_from_slice(extra);
            args.push(url);
            let (_, out, err) = curl(&args);
            println!("curl {} -> {out} {}", args.join(" "), err.trim());
            out
        };
        assert_eq!(status("http://127.0.0.1:1/", &[]), "403");
        assert_eq!(status(&format!("http://localhost:{}/", closed.port()), &[]), "502");
        assert_eq!(status(&format!("http://localhost:{}/", hidden.port()), &[]), "403");
        // CONNECT: curl reports the proxy's status for the tunnel.
        let (code, _, err) = curl(&["-x", &http, "-p", "-o", "/dev/null", "http://127.0.0.1:1/"]);
        println!("curl -p (CONNECT) to a refused target -> exit {code}: {}", err.trim());
        assert!(err.contains("403"), "CONNECT refused: {err}");
        let (code, _, err) =
            curl(&["--socks5-hostname", &s.socks.to_string(), "http://127.0.0.1:1/"]);
        println!("curl --socks5-hostname to a refused target -> exit {code}: {}", err.trim());
        assert_ne!(code, 0);
        let (code, _, err) = curl(&[
            "--socks5-hostname",
            &format!("alice:wrong@{}", s.socks_auth),
            &format!("http://localhost:{}/", origin.port()),
        ]);
        println!("curl with a wrong SOCKS5 password -> exit {code}: {}", err.trim());
        assert_ne!(code, 0);
        let client_log = s.client.log();
        assert!(client_log.contains("proxy request refused by the server"), "{client_log}");
        assert!(client_log.contains("username or password is wrong"), "{client_log}");
    }
}

/// `openssl s_server -WWW` serving the pattern body as `body.bin` with a fresh self-signed
/// certificate for `localhost`.
struct TlsServer {
    port: u16,
    _process: ChildGuard,
    _dir: TempDir,
}

impl TlsServer {
    fn start() -> Option<TlsServer> {
        if !have("openssl") {
            return None;
        }
        let dir = TempDir::new("proxy");
        let mut body = std::fs::File::create(dir.0.join("body.bin")).expect("body");
        pattern::write_pattern(&mut body, SEED, BODY).expect("write body");
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl req");
        assert!(made.success(), "openssl req failed");
        let lease = reserve_port();
        let port = lease.port();
        drop(lease);
        let process = ChildGuard::spawn(
            Command::new("openssl")
                .args([
                    "s_server", "-quiet", "-WWW", "-cert", "cert.pem", "-key", "key.pem",
                ])
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("openssl s_server");
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "openssl s_server",
            String::new,
        );
        Some(TlsServer {
            port,
            _process: process,
            _dir: dir,
        })
    }
}

/// Seconds to move `total` bytes to a sink through `connect` (a proxy handshake first when
/// `socks_target` is set), the sink's count checked.
fn one_transfer(app: SocketAddr, socks_target: Option<SocketAddr>, total: u64) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(app).expect("connect");
    if let Some(target) = socks_target {
        s.write_all(&[5, 1, 0]).unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).unwrap();
        let ip = match target.ip() {
            std::net::IpAddr::V4(ip) => ip.octets(),
            std::net::IpAddr::V6(_) => unreachable!("loopback v4"),
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&ip);
        req.extend_from_slice(&target.port().to_be_bytes());
        s.write_all(&req).unwrap();
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).unwrap();
        assert_eq!(rep[1], 0);
    }
    pattern::write_pattern(&mut s, 1, total).expect("send");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let report = mtcpd_testkit::backends::SinkReport::read_from(&mut s).expect("sink report");
    assert_eq!(report.len, total, "the sink got every byte");
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One stream through the SOCKS5 listener vs a plain forward to the same sink, on the same
/// client and server, alternating rounds; prints medians and spread.
#[test]
#[ignore = "a measurement: cargo nextest run -p mtcpd --test proxy --run-ignored only bench"]
fn bench_socks5_vs_forward() {
    let io = match std::env::var("MTCPD_IO").as_deref() {
        Ok("uring") => Driver::Uring,
        _ => Driver::Mio,
    };
    let sink = mtcpd_testkit::backends::sink_backend();
    let dir = TempDir::new("proxy");
    let leases: Vec<PortLease> = (0..3).map(|_| reserve_port()).collect();
    let (tunnel, fwd, socks) = (leases[0].port(), leases[1].port(), leases[2].port());
    let server = start_daemon(
        &dir.0,
        "server",
        "server",
        &format!(
            "psk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {tunnel}\n\
             backend_ip = \"127.0.0.1\"\nbackend_port = {}\nallow = [\"127.0.0.1:{}\"]\n\
             [limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n",
            sink.port(),
            sink.port()
        ),
        io,
    );
    wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel)), "server", || {
        server.log()
    });
    let client = start_daemon(
        &dir.0,
        "client",
        "client",
        &format!(
            "psk = \"{KEY}\"\n[client]\nserver_ip = \"127.0.0.1\"\nserver_port = {tunnel}\n\
             local_listen_ip = \"127.0.0.1\"\nlocal_listen_port = {fwd}\n\
             [[client.socks5]]\nlisten = \"127.0.0.1:{socks}\"\n\
             [limits]\nstream_window = \"4MiB\"\nsession_window = \"64MiB\"\n"
        ),
        io,
    );
    let fwd = SocketAddr::from(([127, 0, 0, 1], fwd));
    let socks = SocketAddr::from(([127, 0, 0, 1], socks));
    wait_listening(fwd, "forward", || client.log());
    wait_listening(socks, "socks5", || client.log());
    let total: u64 = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512 << 20);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    one_transfer(fwd, None, 16 << 20);
    one_transfer(socks, Some(sink), 16 << 20);
    let (mut plain, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(total as f64 * 8.0 / one_transfer(fwd, None, total) / 1e9);
        proxied.push(total as f64 * 8.0 / one_transfer(socks, Some(sink), total) / 1e9);
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    println!(
        "driver {io}, {} MiB per round, {rounds} rounds alternating: forward median {:.2} Gbit/s \
         ({}), SOCKS5 median {:.2} Gbit/s ({})",
        total >> 20,
        median(plain.clone()),
        spread(&plain),
        median(proxied.clone()),
        spread(&proxied)
    );
}
