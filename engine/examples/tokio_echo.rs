// Async mtcpd streams under tokio (cargo feature `tokio`): the server echoes every stream it
// accepts; ONE client task drives 100 streams at once and checks what comes back. No tokio
// runtime runs inside the engine: its worker threads wake the tasks.
use std::io;

use futures_util::future::try_join_all;
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STREAMS: usize = 100;
const BYTES_PER_STREAM: usize = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = RuntimeOptions::default();
    opts.engine.psk = b"an example key, not a secret: make yours with `mtcpd genkey`".to_vec();
    opts.engine.pool_size = 4;
    let server = Server::accept_all(opts.clone(), "127.0.0.1:0".parse()?)?;
    let client = Client::start(opts, server.local_addr())?;

    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (served, echoed) =
        runtime.block_on(async { tokio::join!(serve(&server, STREAMS), run_client(&client)) });
    served?;
    println!(
        "{} streams echoed {} bytes each, checksums equal",
        echoed?, BYTES_PER_STREAM
    );

    client.shutdown();
    client.join();
    server.shutdown();
    server.join();
    Ok(())
}

/// Accepts `count` streams and echoes each in its own task until the client finishes.
async fn serve(server: &Server, count: usize) -> io::Result<()> {
    let mut echoes = Vec::new();
    for _ in 0..count {
        let accepted = server.accept_async().await?;
        echoes.push(tokio::spawn(async move {
            let (mut from_client, mut to_client) = accepted.stream.into_split();
            tokio::io::copy(&mut from_client, &mut to_client).await?;
            to_client.shutdown().await // after the client's end of stream, ours
        }));
    }
    for echo in echoes {
        echo.await??;
    }
    Ok(())
}

/// Opens the streams and runs them all concurrently, in this one task.
async fn run_client(client: &Client) -> io::Result<usize> {
    let streams = (0..STREAMS).map(|i| async move {
        let stream = client.open_stream_async(None).await?;
        let (mut rd, mut wr) = stream.into_split();
        let data: Vec<u8> = (0..BYTES_PER_STREAM).map(|k| (k * 31 + i) as u8).collect();
        let sent = checksum(&data);
        let write = async {
            wr.write_all(&data).await?;
            wr.shutdown().await // end of stream: the echo finishes after the last byte
        };
        let mut back = Vec::with_capacity(BYTES_PER_STREAM);
        let (written, read) = tokio::join!(write, rd.read_to_end(&mut back));
        written?;
        read?;
        if checksum(&back) != sent || back.len() != data.len() {
            return Err(io::Error::other(format!("stream {i}: the echo differs")));
        }
        Ok(())
    });
    Ok(try_join_all(streams).await?.len())
}

/// FNV-1a, enough to tell an echo from a corruption.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
