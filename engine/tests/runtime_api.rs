//! The in-process library API (`runtime::{Client, Server, MtcpStream}`) on each I/O driver:
//! bulk transfer, many concurrent streams, half-close, resets, writes before the tunnels are up,
//! graceful shutdown and session loss, drop semantics, timeouts, and streams mixing the API
//! with TCP on the other end. Every test runs under a watchdog, and every blocking read has a
//! timeout, so nothing hangs.

mod runtime_support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mtcpd_engine::runtime::{
    self, Client, ClientForward, MtcpStream, Route, RuntimeOptions, Server, StreamFailure,
};
use mtcpd_testkit::pattern::{self, Checksum, sha256};
use mtcpd_testkit::{Driver, backends, driver_tests, within};

const T: Duration = Duration::from_secs(30);

// Each test runs the scenario of the same name below, once per driver, under a watchdog.
driver_tests! {
    #[within(240)]
    fn bulk_64mib_echo(io) { bulk_64mib_echo(io) }
    #[within(240)]
    fn many_concurrent_streams(io) { many_concurrent_streams(io) }
    #[within(240)]
    fn twenty_thousand_streams(io) { twenty_thousand_streams(io) }
    #[within(60)]
    fn half_close(io) { half_close(io) }
    #[within(60)]
    fn resets(io) { resets(io) }
    #[within(90)]
    fn writes_before_the_server_exists(io) { writes_before_the_server_exists(io) }
    #[within(90)]
    fn graceful_shutdown(io) { graceful_shutdown(io) }
    #[within(90)]
    fn session_loss(io) { session_loss(io) }
    #[within(60)]
    fn drop_semantics(io) { drop_semantics(io) }
    #[within(60)]
    fn timeouts_and_try_variants(io) { timeouts_and_try_variants(io) }
    #[within(120)]
    fn mixed_api_and_tcp(io) { mixed_api_and_tcp(io) }
    #[within(120)]
    fn two_workers_each_side(io) { two_workers_each_side(io) }
}

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-api-test-key, 32 bytes at least",
        4,
        Duration::from_secs(2),
    );
    o.engine.redial_backoff_min = Duration::from_millis(20);
    o.engine.redial_backoff_max = Duration::from_millis(200);
    o
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A pair on loopback: a server handing every stream to the test, and a client to it.
fn pair(io: Driver) -> (Server, Client) {
    let server = Server::accept_all(opts(io), any_port()).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    (server, client)
}

fn with_timeouts(mut s: MtcpStream) -> MtcpStream {
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

fn accept(server: &Server) -> (MtcpStream, Option<String>) {
    let a = server.accept_timeout(T).unwrap();
    (with_timeouts(a.stream), a.target)
}

fn failure(e: &io::Error) -> Option<StreamFailure> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<StreamFailure>())
        .copied()
}

fn read_all(s: &mut impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

fn stop(server: Server, client: Client) {
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

#[test]
fn api_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send_sync::<Server>();
    send::<MtcpStream>();
    send::<mtcpd_engine::runtime::ReadHalf>();
    send::<mtcpd_engine::runtime::WriteHalf>();
    send::<mtcpd_engine::runtime::Accepted>();
}

mod example {
    include!("../examples/in_process_echo.rs");

    pub(super) fn run() -> Result<(), String> {
        main().map_err(|e| e.to_string())
    }
}

/// The example (shown in the API docs and, verbatim, in the README) runs.
#[test]
fn the_example_runs_and_the_readme_shows_it() {
    within(60, example::run).unwrap();
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/in_process_echo.rs");
    assert!(
        readme.contains(example),
        "README.md must show engine/examples/in_process_echo.rs verbatim"
    );
}

// ----- Scenarios --------------------------------------------------------------------------------

/// 64 MiB through one stream, echoed in-process by the server with the zero-copy calls; the
/// sha256 of what was sent, what the server received and what came back agree.
fn bulk_64mib_echo(io: Driver) {
    const TOTAL: usize = 64 << 20;
    let (server, client) = pair(io);
    let stream = with_timeouts(client.open_stream(Some("bulk")).unwrap());
    let (mut rd, mut wr) = stream.into_split();
    let writer = std::thread::spawn(move || {
        // The pattern differs at every offset, so a misplaced chunk changes the hash.
        let sent = pattern::write_pattern(&mut wr, 1, TOTAL as u64).unwrap();
        wr.shutdown_write().unwrap();
        sent
    });
    let echo = {
        let (stream, target) = accept(&server);
        assert_eq!(target.as_deref(), Some("bulk"));
        std::thread::spawn(move || {
            let (mut rd, mut wr) = stream.into_split();
            let mut received = Checksum::new();
            loop {
                let chunk = rd.read_bytes().unwrap();
                if chunk.is_empty() {
                    break;
                }
                received.update(&chunk);
                let mut rest: Bytes = chunk;
                while !rest.is_empty() {
                    let k = wr.write_bytes(rest.clone()).unwrap();
                    let _ = rest.split_to(k);
                }
            }
            wr.shutdown_write().unwrap();
            received
        })
    };
    let echoed = pattern::read_to_end_checksum(&mut rd).unwrap();
    let sent = writer.join().unwrap();
    let received = echo.join().unwrap();
    assert_eq!(received.len(), TOTAL as u64);
    assert_eq!(echoed.len(), TOTAL as u64);
    assert_eq!(received.digest(), sent, "server received different bytes");
    assert_eq!(echoed.digest(), sent, "echo differs");
    stop(server, client);
}

fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// 2,000 streams open at once, each with its own random payload (up to 8 KiB), all answered
/// byte-exact — and none of them costs a file descriptor.
fn many_concurrent_streams(io: Driver) {
    concurrent_streams(io, 2_000, 8192);
}

/// 20,000 streams open at once (40,000 in-process endpoints: far past a default open-file
/// limit of 1,024), up to 1 KiB each.
fn twenty_thousand_streams(io: Driver) {
    concurrent_streams(io, 20_000, 1024);
}

fn concurrent_streams(io: Driver, count: usize, max_len: usize) {
    let (server, client) = pair(io);
    let fds_before = open_fds();
    let payload = move |i: usize| pattern::bytes(i as u64 + 7, 1 + (i * 7919) % max_len);
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = with_timeouts(client.open_stream(Some(&format!("s{i}"))).unwrap());
        s.write_all(&payload(i)).unwrap();
        s.shutdown_write().unwrap();
        streams.push(s);
    }
    let answered = std::thread::spawn(move || {
        let mut held = Vec::with_capacity(count);
        for _ in 0..count {
            let (mut s, target) = accept(&server);
            let i: usize = target.unwrap()[1..].parse().unwrap();
            let got = read_all(&mut s);
            assert!(got == payload(i), "stream {i}: server received other bytes");
            let answer: Vec<u8> = got.iter().map(|b| b ^ 0x5a).collect();
            s.write_all(&answer).unwrap();
            s.shutdown_write().unwrap();
            // Kept open on this side until every stream was answered.
            held.push(s);
        }
        (server, held)
    });
    let (server, held) = answered.join().unwrap();
    if let (Some(before), Some(now)) = (fds_before, open_fds()) {
        // Both ends' streams are all open now; a socket each would be 2 x count fds.
        assert!(
            now < before + 64,
            "{count} streams cost file descriptors: {before} -> {now}"
        );
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let got = read_all(s);
        let want: Vec<u8> = payload(i).iter().map(|b| b ^ 0x5a).collect();
        assert!(got == want, "stream {i}: answer differs");
    }
    drop(held);
    drop(streams);
    stop(server, client);
}

/// The client finishes its direction; the server reads to end of stream, then answers; the
/// client reads the answer, then end of stream.
fn half_close(io: Driver) {
    let (server, client) = pair(io);
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"question").unwrap();
    s.shutdown_write().unwrap();
    s.shutdown_write().unwrap(); // idempotent
    let e = s.write(b"more").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);

    let (mut a, target) = accept(&server);
    assert_eq!(target, None);
    assert_eq!(read_all(&mut a), b"question");
    assert_eq!(a.read(&mut [0; 8]).unwrap(), 0, "EOF is sticky");
    // The server's direction is still open after the client's EOF.
    std::thread::sleep(Duration::from_millis(50));
    a.write_all(b"answer after EOF").unwrap();
    a.shutdown_write().unwrap();

    assert_eq!(read_all(&mut s), b"answer after EOF");
    assert_eq!(s.read(&mut [0; 8]).unwrap(), 0);
    drop((a, s));
    stop(server, client);
}

/// A reset from either end surfaces as `ConnectionReset` with its code; a refused target too.
fn resets(io: Driver) {
    let server = Server::start(
        opts(io),
        any_port(),
        Arc::new(|t| match t {
            Some("nowhere") => Route::Refuse,
            _ => Route::Accept,
        }),
    )
    .unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();

    // The server resets.
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"ping").unwrap();
    let (mut a, _) = accept(&server);
    let mut four = [0; 4];
    a.read_exact(&mut four).unwrap();
    a.reset(42);
    let e = s.read(&mut [0; 16]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::ResetByPeer(42)));
    let e = s.write(b"x").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);

    // The client resets while the server is blocked reading.
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"pong").unwrap();
    let (a, _) = accept(&server);
    let (mut ard, _awr) = a.into_split();
    ard.read_exact(&mut four).unwrap();
    let blocked = std::thread::spawn(move || ard.read(&mut [0; 16]));
    std::thread::sleep(Duration::from_millis(100));
    s.reset(7);
    let e = blocked.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::ResetByPeer(7)));

    // A reset through the write half: the kept read half fails too, and the peer sees it.
    let s = with_timeouts(client.open_stream(None).unwrap());
    let (mut crd, mut cwr) = s.into_split();
    cwr.write_all(b"half").unwrap();
    let (mut a, _) = accept(&server);
    a.read_exact(&mut four).unwrap();
    cwr.reset(9);
    let e = crd.read(&mut [0; 4]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::ResetLocally(9)));
    let e = a.read(&mut [0; 4]).unwrap_err();
    assert_eq!(failure(&e), Some(StreamFailure::ResetByPeer(9)));

    // A refused target: the server resets with code 1.
    let mut s = with_timeouts(client.open_stream(Some("nowhere")).unwrap());
    let e = s.read(&mut [0; 16]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::ResetByPeer(1)));

    // A reset of one stream leaves the others alone.
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"still fine").unwrap();
    s.shutdown_write().unwrap();
    let (mut a, _) = accept(&server);
    assert_eq!(read_all(&mut a), b"still fine");
    drop((a, s));
    stop(server, client);

    // `spawn_server` has no acceptor: a stream routed in-process is reset with code 1.
    let daemon = runtime::spawn_server(opts(io), any_port(), Arc::new(|_| Route::Accept)).unwrap();
    let client = Client::start(opts(io), daemon.local_addrs()[0]).unwrap();
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    let e = s.read(&mut [0; 4]).unwrap_err();
    assert_eq!(failure(&e), Some(StreamFailure::ResetByPeer(1)), "{e}");
    client.shutdown();
    daemon.shutdown();
    client.join();
    daemon.join();
}

/// The client starts before its server: a stream opened then takes writes at once (up to its
/// buffer; past that the writer blocks, here until its timeout), and everything arrives once
/// the server is up.
fn writes_before_the_server_exists(io: Driver) {
    let addr = {
        let l = TcpListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    };
    let client = Client::start(opts(io), addr).unwrap();
    let data = pattern::bytes(99, 1 << 20);
    let mut s = client.open_stream(Some("early")).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let t0 = Instant::now();
    let mut written = 0;
    let err = loop {
        match s.write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert_eq!(written, 256 * 1024, "the stream buffers exactly its bound");
    assert!(t0.elapsed() < Duration::from_secs(5));

    std::thread::sleep(Duration::from_millis(200));
    let server = Server::accept_all(opts(io), addr).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let (mut a, target) = accept(&server);
    assert_eq!(target.as_deref(), Some("early"));
    let reader = std::thread::spawn(move || {
        let got = read_all(&mut a);
        a.write_all(b"got it").unwrap();
        got
    });
    s.write_all(&data[written..]).unwrap();
    s.shutdown_write().unwrap();
    assert!(reader.join().unwrap() == data, "bytes differ");
    assert_eq!(read_all(&mut s), b"got it");
    drop(s);
    stop(server, client);
}

/// `shutdown` lets an open stream finish, refuses new ones, and `join` returns; afterwards the
/// server's accept reports it stopped.
fn graceful_shutdown(io: Driver) {
    let (server, client) = pair(io);
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"before").unwrap();
    let (mut a, _) = accept(&server);
    let mut six = [0; 6];
    a.read_exact(&mut six).unwrap();

    client.shutdown();
    let e = client.open_stream(None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    // The open stream still works in both directions while the client drains.
    s.write_all(b" and after").unwrap();
    s.shutdown_write().unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" and after");
    a.write_all(b"bye").unwrap();
    drop(a);
    assert_eq!(read_all(&mut s), b"bye");
    drop(s);

    let t0 = Instant::now();
    client.join();
    assert!(
        t0.elapsed() < Duration::from_millis(1900),
        "the drain should end with the last stream, not at the drain timeout"
    );
    server.shutdown();
    let e = loop {
        match server.accept_timeout(T) {
            Ok(_) => panic!("no stream was opened"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    server.join();
}

/// A stream left open when its server stops: a stream opened while the server drains is refused
/// (`ConnectionRefused`); after the drain timeout the session closes and both ends' streams fail
/// with `ConnectionAborted`; a blocked reader wakes up.
fn session_loss(io: Driver) {
    let mut o = opts(io);
    o.drain_timeout = Duration::from_millis(1500);
    let server = Server::accept_all(o, any_port()).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut s = with_timeouts(client.open_stream(None).unwrap());
    s.write_all(b"hello").unwrap();
    let (mut a, _) = accept(&server);
    let mut five = [0; 5];
    a.read_exact(&mut five).unwrap();
    let (mut crd, _cwr) = s.into_split();
    let blocked = std::thread::spawn(move || crd.read(&mut [0; 16]));

    server.shutdown();
    // The server's GO_AWAY reaches the client well within this.
    std::thread::sleep(Duration::from_millis(300));
    let mut late = with_timeouts(client.open_stream(None).unwrap());
    let e = late.read(&mut [0; 4]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::NotOpened));
    server.join();
    let e = blocked.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    assert!(matches!(
        failure(&e),
        Some(StreamFailure::SessionLost | StreamFailure::RuntimeStopped)
    ));
    let e = a.read(&mut [0; 16]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    let e = a.write(b"x").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");

    // With the runtime gone, the client's streams fail the same way.
    let mut s = client.open_stream(None).unwrap();
    client.shutdown();
    client.join();
    let e = s.read(&mut [0; 4]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    assert_eq!(failure(&e), Some(StreamFailure::RuntimeStopped));
}

/// Dropping a stream closes it gracefully: written bytes arrive, then end of stream. Dropping
/// only the read half discards what arrives, so the peer's writer is never stuck.
fn drop_semantics(io: Driver) {
    let (server, client) = pair(io);
    let data = pattern::bytes(5, 3 << 20);

    // Written, then dropped without shutdown: everything arrives, then EOF.
    let mut s = client.open_stream(None).unwrap();
    let (mut a, _) = accept(&server);
    let feeder = {
        let data = data.clone();
        std::thread::spawn(move || {
            s.write_all(&data).unwrap();
            drop(s);
        })
    };
    assert!(read_all(&mut a) == data);
    feeder.join().unwrap();
    drop(a);

    // The server drops its read half and answers; the client writes far more than any
    // buffer holds and still finishes, then reads the answer.
    let s = with_timeouts(client.open_stream(None).unwrap());
    let (a, _) = accept(&server);
    let (ard, mut awr) = a.into_split();
    drop(ard);
    awr.write_all(b"not listening").unwrap();
    drop(awr);
    let (mut crd, mut cwr) = s.into_split();
    cwr.write_all(&data).unwrap();
    cwr.write_all(&data).unwrap();
    drop(cwr);
    assert_eq!(read_all(&mut crd), b"not listening");
    stop(server, client);
}

/// Read timeouts, accept timeouts and the non-blocking accept.
fn timeouts_and_try_variants(io: Driver) {
    let (server, client) = pair(io);
    assert!(server.try_accept().unwrap().is_none());
    let e = server
        .accept_timeout(Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);

    let mut s = client.open_stream(None).unwrap();
    assert_eq!(
        s.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let e = s.read(&mut [0; 8]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let long = "x".repeat(70_000);
    assert_eq!(
        client.open_stream(Some(&long)).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );

    // The stream is still usable after a timeout.
    s.write_all(b"late").unwrap();
    let deadline = Instant::now() + T;
    let mut a = loop {
        if let Some(a) = server.try_accept().unwrap() {
            break a.stream;
        }
        assert!(Instant::now() < deadline, "no stream arrived");
        std::thread::sleep(Duration::from_millis(5));
    };
    a.set_read_timeout(Some(T)).unwrap();
    let mut four = [0; 4];
    a.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"late");
    a.write_all(b"ok").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut two = [0; 2];
    s.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"ok");
    drop((a, s));
    stop(server, client);
}

/// The API on one end, TCP on the other: an in-process stream the server connects to a TCP
/// backend, and a TCP connection to a client forward that the server accepts in-process.
fn mixed_api_and_tcp(io: Driver) {
    let backend = backends::echo_backend();
    let server = Server::start(
        opts(io),
        any_port(),
        Arc::new(move |t| match t {
            Some("echo") => Route::Connect(backend),
            _ => Route::Accept,
        }),
    )
    .unwrap();
    let client = Client::start_with_forwards(
        opts(io),
        server.local_addr(),
        &[ClientForward {
            listen: any_port(),
            target: Some("in-process".into()),
            name: None,
        }],
    )
    .unwrap();

    // API stream → server → TCP echo backend.
    let data = pattern::bytes(11, 4 << 20);
    let s = with_timeouts(client.open_stream(Some("echo")).unwrap());
    let (mut rd, mut wr) = s.into_split();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            wr.write_all(&data).unwrap();
            wr.shutdown_write().unwrap();
        })
    };
    assert!(
        read_all(&mut rd) == data,
        "echo through the TCP backend differs"
    );
    writer.join().unwrap();

    // TCP application → client forward → server → accepted in-process.
    let mut app = TcpStream::connect(client.local_addrs()[0]).unwrap();
    app.set_read_timeout(Some(T)).unwrap();
    let request = pattern::bytes(12, 1 << 20);
    app.write_all(&request).unwrap();
    app.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut a, target) = accept(&server);
    assert_eq!(target.as_deref(), Some("in-process"));
    let got = read_all(&mut a);
    assert!(got == request);
    let digest = sha256(&got);
    a.write_all(&digest).unwrap();
    drop(a);
    let mut answer = Vec::new();
    app.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, digest);
    stop(server, client);
}

/// Two workers at each end: the client runs two sessions and spreads its streams over them;
/// the server's workers each own some of the sessions (tunnels handed over as needed) and all
/// deliver to the one acceptor.
fn two_workers_each_side(io: Driver) {
    let two = || RuntimeOptions {
        workers: 2,
        ..opts(io)
    };
    let server = Server::accept_all(two(), any_port()).unwrap();
    let client = Client::start(two(), server.local_addr()).unwrap();
    assert_eq!(client.runtime().workers(), 2);
    assert_eq!(server.runtime().workers(), 2);
    const STREAMS: usize = 64;
    let payload = |i: usize| pattern::bytes(i as u64 + 100, 64 * 1024 + i);
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut s = with_timeouts(client.open_stream(Some(&format!("w{i}"))).unwrap());
        s.write_all(&payload(i)).unwrap();
        s.shutdown_write().unwrap();
        streams.push(s);
    }
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..STREAMS {
            let (mut s, target) = accept(&server);
            let i: usize = target.unwrap()[1..].parse().unwrap();
            let got = read_all(&mut s);
            assert!(got == payload(i), "stream {i}: server received other bytes");
            s.write_all(&sha256(&got)).unwrap();
            s.shutdown_write().unwrap();
            held.push(s);
        }
        (server, held)
    });
    let (server, held) = server.join().unwrap();
    for (i, s) in streams.iter_mut().enumerate() {
        assert_eq!(read_all(s), sha256(&payload(i)), "stream {i}");
    }
    drop(held);
    drop(streams);
    stop(server, client);
}
