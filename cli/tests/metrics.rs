//! The metrics endpoint and `mtcpd stats` against a real daemon pair (the `mtcpd` binary on
//! loopback), on each I/O driver: after a transfer of known size, the scrape's names, labels
//! and values; `mtcpd stats --once` and `--json`; the Grafana dashboard's and the alert rules'
//! metric names against what the daemons really export; bad HTTP requests answered 4xx without
//! disturbing the endpoint. Processes are stopped (the kit's `ChildGuard`) even when a test
//! fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mtcpd::stats::exposition::{Sample, parse};
use mtcpd_testkit::backends;
use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::ports::{PortLease, listening_within, reserve_port};
use mtcpd_testkit::tempdir::TempDir;
use mtcpd_testkit::{Driver, driver_tests};

const KEY: &str = "metrics-test-key-0123456789abcdef-0123456789";
const POOL: usize = 4;
const SIZE: u64 = 5 * 1024 * 1024 + 123;
/// What the sink backend answers: SHA-256 and length.
const SINK_REPORT: u64 = 40;

driver_tests! {
    #[within(90)]
    fn metrics_of_a_transfer(io) { metrics_of_a_transfer(io) }
}

const MTCPD: &str = env!("CARGO_BIN_EXE_mtcpd");

/// `mtcpd NAME -c CONFIG ARGS` (the name is the role) at info level.
fn start_daemon(dir: &Path, name: &str, config: &str, args: &[&str]) -> Daemon {
    Daemon::launch(MTCPD, dir, name, name, config)
        .args(args)
        .log_filter("info")
        .spawn()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(addr: SocketAddr, daemon: &Daemon) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}; log:\n{}",
        daemon.log()
    );
}

/// One HTTP exchange: sends `request` as is, returns (status code, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(request);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (code, body)
}

fn scrape(addr: SocketAddr) -> String {
    let (code, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0].value
}

fn of<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

/// Metric names a scrape announces (`# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Every `mtcpd_…` name in `text`.
fn mtcpd_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mtcpd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn metrics_of_a_transfer(io: Driver) {
    let dir = TempDir::new(&format!("metrics-{}", io.name()));
    let leases: Vec<PortLease> = (0..4).map(|_| reserve_port()).collect();
    let [tunnel, app, server_metrics, client_metrics] = [0, 1, 2, 3].map(|i| leases[i].port());
    let sink = backends::sink_backend();
    // Both ends configure the least unsent limit there is (the default is 128 KiB).
    let server_config = format!(
        "mode = \"server\"\npsk = \"{KEY}\"\nmetrics_listen = \"127.0.0.1:{server_metrics}\"\n\
         socket_notsent_lowat = \"16KiB\"\n[server]\nlisten_ip = \"127.0.0.1\"\nlisten_port = {tunnel}\n\
         backend_ip = \"127.0.0.1\"\nbackend_port = {}\nconnection_pool_size = {POOL}\n",
        sink.port()
    );
    let server = start_daemon(&dir.0, "server", &server_config, &["--io", io.name()]);
    // Not the tunnel port: a probe connection there would be a refused handshake. The
    // endpoint starts after the tunnel listener is bound.
    wait_listening(local(server_metrics), &server);
    // The client's endpoint comes from the command line instead.
    let client_config = format!(
        "mode = \"client\"\npsk = \"{KEY}\"\nsocket_notsent_lowat = \"16KiB\"\n\
         [client]\nserver_ip = \"127.0.0.1\"\n\
         server_port = {tunnel}\nconnection_pool_size = {POOL}\n\
         [[client.forward]]\nname = \"bulk\"\nlisten = \"127.0.0.1:{app}\"\n"
    );
    let metrics_flag = local(client_metrics).to_string();
    let client = start_daemon(
        &dir.0,
        "client",
        &client_config,
        &["--io", io.name(), "--metrics", &metrics_flag],
    );
    // Not the application port: a probe connection there would be a stream. The endpoint
    // starts after the forwards are bound.
    wait_listening(local(client_metrics), &client);

    let conn = TcpStream::connect(local(app)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (_, report) = backends::send_to_sink(conn, 7, SIZE).expect("transfer through mtcpd");
    assert_eq!(report.len, SIZE);

    // Counters settle as the stream closes at both ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (client_text, server_text) = loop {
        let (c, s) = (scrape(local(client_metrics)), scrape(local(server_metrics)));
        let (cs, ss) = (parse(&c).unwrap(), parse(&s).unwrap());
        let settled = |samples: &[Sample]| {
            value(samples, "mtcpd_streams", &[]) == 0.0
                && of(samples, "mtcpd_tunnel_up")
                    .iter()
                    .map(|s| s.value)
                    .sum::<f64>()
                    == POOL as f64
        };
        if (settled(&cs) && settled(&ss)) || Instant::now() > deadline {
            break (c, s);
        }
        thread::sleep(Duration::from_millis(50));
    };
    let logs = || format!("client:\n{}\nserver:\n{}", client.log(), server.log());
    let c = parse(&client_text).unwrap_or_else(|e| panic!("{e}\n{client_text}"));
    let s = parse(&server_text).unwrap_or_else(|e| panic!("{e}\n{server_text}"));

    for (samples, role) in [(&c, "client"), (&s, "server")] {
        let info = &of(samples, "mtcpd_build_info")[0];
        assert_eq!(info.label("io"), io.name(), "{role}");
        assert_eq!(info.label("role"), role);
        assert_eq!(info.label("version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(
            value(samples, "mtcpd_sessions", &[]),
            1.0,
            "{role}\n{}",
            logs()
        );
        assert_eq!(value(samples, "mtcpd_streams", &[]), 0.0);
        assert_eq!(value(samples, "mtcpd_streams_opened_total", &[]), 1.0);
        assert_eq!(value(samples, "mtcpd_frames_resent_total", &[]), 0.0);
        // Relief is off by default: every kind present, none counted.
        for kind in [
            "reports_sent",
            "reports_received",
            "frames_resent",
            "bytes_resent",
        ] {
            assert_eq!(
                value(samples, "mtcpd_hol_relief_total", &[("kind", kind)]),
                0.0,
                "{role}: {kind}"
            );
        }
        assert_eq!(value(samples, "mtcpd_reorder_buffered_bytes", &[]), 0.0);
        assert_eq!(value(samples, "mtcpd_scrape_workers_missing", &[]), 0.0);
        let up = of(samples, "mtcpd_tunnel_up");
        assert_eq!(up.len(), POOL, "{role}: one per tunnel");
        assert_eq!(
            up.iter().map(|s| s.value).sum::<f64>(),
            POOL as f64,
            "{role}"
        );
        let mut indices: Vec<&str> = up.iter().map(|s| s.label("tunnel")).collect();
        indices.sort_unstable();
        assert_eq!(indices, ["0", "1", "2", "3"]);
        for name in [
            "mtcpd_tunnel_rtt_seconds",
            "mtcpd_tunnel_min_rtt_seconds",
            "mtcpd_tunnel_cwnd_segments",
            "mtcpd_tunnel_unsent_limit_bytes",
            "mtcpd_tunnel_delivery_rate_bytes_per_second",
            "mtcpd_tunnel_retransmitted_segments_total",
            "mtcpd_tunnel_sent_bytes_total",
            "mtcpd_tunnel_received_bytes_total",
        ] {
            let per_tunnel = of(samples, name);
            assert_eq!(per_tunnel.len(), POOL, "{role}: {name}");
            for t in per_tunnel {
                assert_eq!(t.label("session").len(), 12, "{t:?}");
                assert!(t.label("peer").parse::<SocketAddr>().is_ok(), "{t:?}");
            }
        }
        for t in of(samples, "mtcpd_tunnel_rtt_seconds") {
            assert!(t.value > 0.0 && t.value < 1.0, "loopback RTT: {t:?}");
        }
        for t in of(samples, "mtcpd_tunnel_cwnd_segments") {
            assert!(t.value >= 1.0, "{t:?}");
        }
        // The unsent limit each socket holds (read back from it): the configured 16 KiB up
        // to 16 MiB.
        for t in of(samples, "mtcpd_tunnel_unsent_limit_bytes") {
            assert!(
                t.value >= 16384.0 && t.value <= 16.0 * 1048576.0,
                "{role}: {t:?}"
            );
        }
        // The congestion control really in use, read back from each connection: the
        // default asks for bbr, which the test hosts have.
        let cc = of(samples, "mtcpd_tunnel_congestion_info");
        assert_eq!(cc.len(), POOL, "{role}");
        for t in cc {
            assert_eq!(
                (t.label("algorithm"), t.value),
                ("bbr", 1.0),
                "{role}: {t:?}"
            );
        }
        assert_eq!(
            of(samples, "mtcpd_tunnels_lost_total")
                .iter()
                .map(|s| s.value)
                .sum::<f64>(),
            0.0,
            "{role}"
        );
        // The coupled cap (on by default) of the one session: whether it binds (on loopback
        // it normally does not, but a busy host's queueing may engage it) and its bytes on the
        // path (all delivered by now).
        let binding = of(samples, "mtcpd_session_coupled_cap_binding");
        assert_eq!(binding.len(), 1, "{role}");
        assert!(
            [0.0, 1.0].contains(&binding[0].value),
            "{role}: {binding:?}"
        );
        let on_path = of(samples, "mtcpd_session_bytes_on_path");
        assert_eq!(on_path.len(), 1, "{role}");
        assert_eq!(of(samples, "mtcpd_session_rtt_probes_total").len(), 1);
    }
    // The client sent the transfer, hundreds of MB/s on loopback: its tunnels' sockets may
    // hold 4 ms of that, more than the configured 16 KiB (the event loop applied it). The
    // server sent a few small frames: its tunnels keep the configured value, which the event
    // loop also re-applies from the session's config (were the session given the engine's
    // default instead, 128 KiB, they would all read that).
    let limits = |samples: &[Sample]| -> Vec<f64> {
        of(samples, "mtcpd_tunnel_unsent_limit_bytes")
            .iter()
            .map(|t| t.value)
            .collect()
    };
    assert!(limits(&c).iter().any(|&x| x > 16384.0), "{client_text}");
    assert!(limits(&s).contains(&16384.0), "{server_text}");
    // The client sent the transfer: its kernel reported the path's RTT (microseconds here;
    // the RTT probe runs only while the cap binds, and 10 s after it engages).
    let rtt = of(&c, "mtcpd_session_path_rtt_seconds");
    assert_eq!(rtt.len(), 1, "{client_text}");
    assert!(rtt[0].value > 0.0 && rtt[0].value < 0.1, "{rtt:?}");
    // The session is the same at both ends, and the client's tunnels lead to the server.
    let session = of(&c, "mtcpd_tunnel_up")[0].label("session").to_owned();
    assert_eq!(of(&s, "mtcpd_tunnel_up")[0].label("session"), session);
    assert_eq!(
        of(&c, "mtcpd_tunnel_up")[0].label("peer"),
        local(tunnel).to_string()
    );
    // Bytes: the transfer one way, the sink's report the other.
    let (to, from) = (&[("direction", "to_peer")], &[("direction", "from_peer")]);
    assert_eq!(value(&c, "mtcpd_stream_bytes_total", to), SIZE as f64);
    assert_eq!(
        value(&c, "mtcpd_stream_bytes_total", from),
        SINK_REPORT as f64
    );
    assert_eq!(value(&s, "mtcpd_stream_bytes_total", from), SIZE as f64);
    assert_eq!(
        value(&s, "mtcpd_stream_bytes_total", to),
        SINK_REPORT as f64
    );
    let sent: f64 = of(&c, "mtcpd_tunnel_sent_bytes_total")
        .iter()
        .map(|s| s.value)
        .sum();
    let received: f64 = of(&s, "mtcpd_tunnel_received_bytes_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(
        sent > SIZE as f64 && received > SIZE as f64,
        "{sent} {received}"
    );
    assert!(sent < SIZE as f64 * 1.01, "frame overhead is small: {sent}");
    // The forward, by its name.
    let bulk = [("forward", "bulk")];
    assert_eq!(value(&c, "mtcpd_forward_connections_total", &bulk), 1.0);
    let bulk_to = [("forward", "bulk"), ("direction", "to_peer")];
    assert_eq!(
        value(&c, "mtcpd_forward_bytes_total", &bulk_to),
        SIZE as f64
    );
    // The server was never refused a handshake; its reasons are all there, at 0.
    let rejected = of(&s, "mtcpd_handshakes_rejected_total");
    assert!(rejected.iter().any(|r| r.label("reason") == "wrong_key"));
    assert!(rejected.iter().all(|r| r.value == 0.0));

    stats_command(local(client_metrics), io, &session);
    dashboards_use_exported_names(&client_text, &server_text);
    bad_requests_do_not_disturb(local(server_metrics));
    drop(leases);
}

/// `mtcpd stats --once` (a table) and `--once --json` against the client.
fn stats_command(endpoint: SocketAddr, io: Driver, session: &str) {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["stats", "--metrics", &endpoint.to_string(), "--once"])
            .args(["--interval", "200ms"])
            .args(extra)
            .output()
            .expect("run mtcpd stats");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let table = run(&[]);
    assert!(
        table.contains(&format!("client (io {})", io.name())),
        "{table}"
    );
    assert!(
        table.contains("RTT ms") && table.contains("CWND"),
        "{table}"
    );
    assert_eq!(
        table.matches(session).count(),
        POOL + 1,
        "a row per tunnel and one for the session:\n{table}"
    );
    assert!(table.contains("bulk"), "{table}");
    assert!(table.contains(" 4/4 "), "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).expect("JSON");
    assert_eq!(json["io"], io.name());
    assert_eq!(json["bytes_to_peer"], SIZE);
    assert_eq!(json["tunnel_list"].as_array().map(Vec::len), Some(POOL));
    assert_eq!(json["session_list"][0]["tunnels_up"], POOL);
    assert_eq!(json["forward_list"][0]["forward"], "bulk");
    assert!(json["tunnel_list"][0]["rtt_ms"].as_f64().is_some());
    assert_eq!(json["tunnel_list"][0]["congestion"], "bbr");
    assert!(table.contains(" bbr "), "the CC column: {table}");
    assert!(
        json["tunnel_list"][0]["send_bytes_per_second"]
            .as_f64()
            .is_some()
    );

    // An endpoint that is down: a clear error, exit status 1.
    let lease = reserve_port();
    let down = Command::new(env!("CARGO_BIN_EXE_mtcpd"))
        .args([
            "stats",
            "--once",
            "--metrics",
            &local(lease.port()).to_string(),
        ])
        .output()
        .expect("run mtcpd stats");
    assert_eq!(down.status.code(), Some(1));
    let error = String::from_utf8_lossy(&down.stderr);
    assert!(
        error.contains("cannot reach the metrics endpoint"),
        "{error}"
    );
}

/// Every `mtcpd_…` name in the Grafana dashboards and the alert rules is one the daemons
/// export.
fn dashboards_use_exported_names(client: &str, server: &str) {
    let mut exported = exported_names(client);
    exported.extend(exported_names(server));
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib");
    let mut files: Vec<PathBuf> = std::fs::read_dir(contrib.join("grafana"))
        .expect("contrib/grafana")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!files.is_empty(), "no dashboard in contrib/grafana");
    let mut exprs = 0;
    for file in &files {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                let names = mtcpd_names_in(expr);
                assert!(!names.is_empty(), "{}: {expr}", file.display());
                for name in names {
                    assert!(
                        exported.contains(&name),
                        "{}: {name} is not exported",
                        file.display()
                    );
                }
                exprs += 1;
            }
        }
    }
    assert!(
        exprs >= 10,
        "the dashboard shows too little: {exprs} queries"
    );
    files.push(contrib.join("prometheus/mtcpd-alerts.yml"));
    let alerts = std::fs::read_to_string(files.last().unwrap()).expect("alert rules");
    for name in mtcpd_names_in(&alerts) {
        assert!(
            exported.contains(&name),
            "alert rules: {name} is not exported"
        );
    }
}

/// 4xx for what is not `GET /metrics`; the endpoint answers a good scrape afterwards, also
/// after every connection place was held by idle clients.
fn bad_requests_do_not_disturb(endpoint: SocketAddr) {
    let cases: [(&[u8], u16); 5] = [
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n", 404),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 200),
    ];
    for (request, code) in cases {
        assert_eq!(
            http(endpoint, request).0,
            code,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert_eq!(http(endpoint, &huge).0, 431);
    // Idle connections take every place; one more is turned away at once. (First let the
    // answers above finish lingering: each keeps its place up to 200 ms.)
    thread::sleep(Duration::from_millis(600));
    let idle: Vec<TcpStream> = (0..mtcpd::metrics::http::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(endpoint).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(http(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n").0, 503);
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n").0 != 200 {
        assert!(Instant::now() < deadline, "the endpoint did not recover");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(scrape(endpoint).contains("mtcpd_sessions 1\n"));
}
