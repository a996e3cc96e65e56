//! Keys at the library API, on each I/O driver: a runtime does not start without a key unless
//! the program opts in, a short key is refused at start, and a keyless pair that opted in, or a
//! keyed pair, carries a stream; a client whose key the server rejects gets no stream through.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mtcpd_engine::runtime::{Client, RuntimeError, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests};

driver_tests! {
    #[within(60)]
    fn keyless_needs_an_opt_in(io) { keyless_needs_an_opt_in(io) }
    #[within(60)]
    fn a_rejected_key_carries_nothing(io) { a_rejected_key_carries_nothing(io) }
}

fn opts(io: Driver, key: &[u8]) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io: io.name().parse().expect("a driver name"),
        drain_timeout: Duration::from_secs(1),
        ..RuntimeOptions::default()
    };
    o.engine.psk = key.to_vec();
    o.engine.pool_size = 2;
    o.engine.redial_backoff_min = Duration::from_millis(20);
    o.engine.redial_backoff_max = Duration::from_millis(200);
    o
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

fn refused_at_start(result: Result<impl Sized, RuntimeError>) -> String {
    match result {
        Err(RuntimeError::Config(e)) => {
            assert_eq!(e.key, "psk");
            e.to_string()
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started"),
    }
}

/// Sends one line through a fresh stream and reads the server's echo of it.
fn echo_once(client: &Client, server: &Server) {
    let mut stream = client.open_stream(Some("echo")).expect("a stream");
    stream.write_all(b"ping").expect("write");
    stream.shutdown_write().expect("shutdown");
    let mut accepted = server
        .accept_timeout(Duration::from_secs(20))
        .expect("the server accepts the stream");
    let mut got = Vec::new();
    accepted.stream.read_to_end(&mut got).expect("read");
    accepted.stream.write_all(&got).expect("echo");
    drop(accepted);
    let mut back = Vec::new();
    stream.read_to_end(&mut back).expect("read back");
    assert_eq!(back, b"ping");
}

fn keyless_needs_an_opt_in(io: Driver) {
    let why = refused_at_start(Server::accept_all(opts(io, b""), any_port()));
    assert!(why.contains("mtcpd genkey"), "{why}");
    refused_at_start(Client::start(opts(io, b""), any_port()));
    let short = refused_at_start(Server::accept_all(opts(io, &[1; 31]), any_port()));
    assert!(short.contains("32"), "{short}");

    let mut keyless = opts(io, b"");
    keyless.engine.allow_unauthenticated = true;
    let server = Server::accept_all(keyless.clone(), any_port()).expect("opted in");
    let client = Client::start(keyless, server.local_addr()).expect("opted in");
    echo_once(&client, &server);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

fn a_rejected_key_carries_nothing(io: Driver) {
    let server = Server::accept_all(opts(io, &[1; 32]), any_port()).expect("keyed");
    let client = Client::start(opts(io, &[2; 32]), server.local_addr()).expect("keyed");
    if let Ok(mut stream) = client.open_stream(Some("never")) {
        let _ = stream.write_all(b"lost");
        let _ = stream.shutdown_write();
    }
    assert!(
        server.accept_timeout(Duration::from_secs(2)).is_err(),
        "nothing reaches a server whose key differs"
    );
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();

    let server = Server::accept_all(opts(io, &[3; 32]), any_port()).expect("keyed");
    let client = Client::start(opts(io, &[3; 32]), server.local_addr()).expect("keyed");
    echo_once(&client, &server);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
