//! A server's backend connections under pressure, on each I/O driver: a target that never
//! accepts (its accept queue is full, so SYNs hang) resets the stream after
//! `backend_connect_timeout`; beyond `max_backend_connections` new streams are reset at once
//! while the earlier ones carry on; a slow name resolution does not hold up other streams on
//! the same worker (it runs on a resolver thread).

mod runtime_support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{Client, MtcpStream, Route, RuntimeOptions, Server, StreamFailure};
use mtcpd_testkit::{Driver, backends, driver_tests};

const T: Duration = Duration::from_secs(20);

driver_tests! {
    #[within(60)]
    fn backend_connect_timeout_resets_the_stream(io) {
        backend_connect_timeout_resets_the_stream(io)
    }
    #[within(60)]
    fn streams_beyond_the_backend_budget_are_reset(io) {
        streams_beyond_the_backend_budget_are_reset(io)
    }
    #[within(60)]
    fn a_slow_lookup_does_not_stall_other_streams(io) {
        a_slow_lookup_does_not_stall_other_streams(io)
    }
}

fn opts(io: Driver) -> RuntimeOptions {
    runtime_support::options(
        io,
        b"runtime-backends-test-key-0123456789abcdef",
        2,
        Duration::from_secs(1),
    )
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn with_timeouts(mut s: MtcpStream) -> MtcpStream {
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

fn reset_code(e: &io::Error) -> Option<u32> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<StreamFailure>())
    {
        Some(StreamFailure::ResetByPeer(code)) => Some(*code),
        _ => None,
    }
}

/// One echo round trip on `s`.
fn echo_once(s: &mut MtcpStream, what: &[u8]) {
    s.write_all(what).unwrap();
    let mut back = vec![0; what.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, what);
}

/// A listener nobody accepts from, with its accept queue filled: a connect to it hangs (the
/// kernel drops SYNs to a full queue). Returns the listener and the connections that fill it.
fn unresponsive_target() -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind(any_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fill.push(c),
            Err(_) => break,
        }
    }
    (listener, fill)
}

fn backend_connect_timeout_resets_the_stream(io: Driver) {
    let (target, _fill) = unresponsive_target();
    let addr = target.local_addr().unwrap();
    let mut server_opts = opts(io);
    server_opts.backend_connect_timeout = Duration::from_millis(500);
    let server = Server::start(
        server_opts,
        any_port(),
        Arc::new(move |_| Route::Connect(addr)),
    )
    .unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut s = with_timeouts(client.open_stream(Some("nowhere:1")).unwrap());
    let started = Instant::now();
    s.write_all(b"hello").unwrap();
    let e = s.read(&mut [0; 16]).unwrap_err();
    let took = started.elapsed();
    eprintln!("backend connect to a full accept queue: stream reset after {took:?}: {e}");
    assert_eq!(reset_code(&e), Some(3), "{e}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

fn streams_beyond_the_backend_budget_are_reset(io: Driver) {
    let echo = backends::echo_backend();
    let mut server_opts = opts(io);
    server_opts.max_backend_connections = 2;
    let server = Server::start(
        server_opts,
        any_port(),
        Arc::new(move |_| Route::Connect(echo)),
    )
    .unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut first = with_timeouts(client.open_stream(Some("echo:1")).unwrap());
    echo_once(&mut first, b"one");
    let mut second = with_timeouts(client.open_stream(Some("echo:1")).unwrap());
    echo_once(&mut second, b"two");
    // The budget is spent: the third is reset at once.
    let mut third = with_timeouts(client.open_stream(Some("echo:1")).unwrap());
    let started = Instant::now();
    let _ = third.write_all(b"three");
    let e = third.read(&mut [0; 16]).unwrap_err();
    eprintln!(
        "backend budget of 2 spent: third stream reset after {:?}: {e}",
        started.elapsed()
    );
    assert_eq!(reset_code(&e), Some(4), "{e}");
    // The earlier ones are unaffected.
    echo_once(&mut first, b"still one");
    echo_once(&mut second, b"still two");
    // A finished stream gives its place back.
    first.shutdown_write().unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    drop(first);
    let deadline = Instant::now() + T;
    loop {
        let mut again = with_timeouts(client.open_stream(Some("echo:1")).unwrap());
        if again.write_all(b"again").is_ok() {
            let mut back = [0; 5];
            if again.read_exact(&mut back).is_ok() {
                assert_eq!(&back, b"again");
                break;
            }
        }
        // The place is given back once the server has seen the stream finish.
        assert!(
            Instant::now() < deadline,
            "the budget never gave the place back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_slow_lookup_does_not_stall_other_streams(io: Driver) {
    let echo = backends::echo_backend();
    let slow = Duration::from_secs(3);
    let server = Server::start(
        opts(io),
        any_port(),
        Arc::new(move |target| {
            if target == Some("slow.example:1") {
                // A name server that takes its time, on the resolver thread.
                std::thread::sleep(slow);
            }
            Route::Connect(echo)
        }),
    )
    .unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut slow_stream = with_timeouts(client.open_stream(Some("slow.example:1")).unwrap());
    slow_stream.write_all(b"slow").unwrap();
    // Give the server the slow OPEN first.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut fast = with_timeouts(client.open_stream(Some("fast.example:1")).unwrap());
    echo_once(&mut fast, b"fast");
    let fast_took = started.elapsed();
    let mut back = [0; 4];
    slow_stream.read_exact(&mut back).unwrap();
    let slow_took = started.elapsed();
    eprintln!(
        "slow lookup ({slow:?}) in flight: another stream echoed in {fast_took:?}; the slow one in {slow_took:?}"
    );
    assert_eq!(&back, b"slow");
    assert!(fast_took < Duration::from_secs(1), "{fast_took:?}");
    assert!(
        slow_took >= slow - Duration::from_millis(200),
        "{slow_took:?}"
    );
}
