// An mtcpd server and client in one process: open a stream, accept it, answer, shut down.
use std::io::{Read, Write};
use std::time::Duration;

use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = RuntimeOptions::default();
    opts.engine.psk = b"an example key, not a secret: make yours with `mtcpd genkey`".to_vec();
    opts.engine.pool_size = 4;

    // A server that hands every stream to this program, and a client with 4 tunnels to it.
    let server = Server::accept_all(opts.clone(), "127.0.0.1:0".parse()?)?;
    let client = Client::start(opts, server.local_addr())?;

    // Returns at once; the bytes leave as soon as a tunnel is up.
    let mut stream = client.open_stream(Some("greeting"))?;
    stream.write_all(b"hello")?;
    stream.shutdown_write()?;

    let mut accepted = server.accept_timeout(Duration::from_secs(10))?;
    assert_eq!(accepted.target.as_deref(), Some("greeting"));
    let mut request = Vec::new();
    accepted.stream.read_to_end(&mut request)?; // up to the client's shutdown_write
    accepted.stream.write_all(&request.to_ascii_uppercase())?;
    drop(accepted); // a graceful close: the client reads the answer, then end of stream

    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    assert_eq!(answer, "HELLO");
    println!("{answer}");

    // Graceful stop: no new streams, open ones get `drain_timeout` to finish.
    client.shutdown();
    client.join();
    server.shutdown();
    server.join();
    Ok(())
}
