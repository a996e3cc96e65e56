//! Async in-process streams (`AsyncMtcpStream`, `Client::open_stream_async`,
//! `Server::accept_async`) under tokio, current_thread and multi_thread, on each I/O driver:
//! many streams from one task with checksums, backpressure within the window budget, shutdown
//! and reset semantics, drops mid-transfer, a ping-pong hammer for lost wake-ups, the
//! futures-io traits, and the tokio example. Every test runs under a watchdog (`within`), so a
//! lost wake-up fails instead of hanging.

mod runtime_support;

use std::io;
use std::time::Duration;

use futures_util::future::try_join_all;
use mtcpd_engine::runtime::{AsyncMtcpStream, Client, RuntimeOptions, Server, StreamFailure};
use mtcpd_testkit::pattern::{self, sha256};
use mtcpd_testkit::{Driver, driver_tests, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

driver_tests! {
    #[within(120)]
    fn thousand_streams_one_task_current_thread(io) { thousand_streams(io, false) }
    #[within(120)]
    fn thousand_streams_one_task_multi_thread(io) { thousand_streams(io, true) }
    #[within(60)]
    fn backpressure_within_the_window_budget(io) { backpressure(io) }
    #[within(60)]
    fn shutdown_and_reset_semantics(io) { shutdown_and_reset(io) }
    #[within(60)]
    fn drop_mid_transfer(io) { drop_mid_transfer(io) }
    #[within(60)]
    fn ping_pong_hammer_multi_thread(io) { ping_pong_hammer(io) }
    #[within(60)]
    fn futures_io_traits(io) { futures_io_traits(io) }
}

/// Bytes each direction of a stream holds between the program and its worker (the engine's
/// hand-over ring, documented on `MtcpStream`).
const HAND_OVER: u64 = 256 * 1024;
const T: Duration = Duration::from_secs(30);

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-async-test-key, 32 bytes at least",
        4,
        Duration::from_secs(2),
    );
    o.engine.redial_backoff_min = Duration::from_millis(20);
    o.engine.redial_backoff_max = Duration::from_millis(200);
    o
}

fn pair_with(o: RuntimeOptions) -> (Server, Client) {
    let server = Server::accept_all(o.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::start(o, server.local_addr()).unwrap();
    (server, client)
}

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut b = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_time().build().unwrap()
}

fn stop(server: Server, client: Client) {
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

async fn accept(server: &Server) -> AsyncMtcpStream {
    timeout(T, server.accept_async())
        .await
        .expect("a stream in time")
        .expect("accepted")
        .stream
}

/// Echoes `count` accepted streams, each in its own task (the server side of several tests).
async fn echo_server(server: &Server, count: usize) -> io::Result<()> {
    let mut echoes = Vec::new();
    for _ in 0..count {
        let (mut rd, mut wr) = accept(server).await.into_split();
        echoes.push(tokio::spawn(async move {
            tokio::io::copy(&mut rd, &mut wr).await?;
            wr.shutdown().await
        }));
    }
    for e in echoes {
        e.await.map_err(io::Error::other)??;
    }
    Ok(())
}

// ----- Scenarios --------------------------------------------------------------------------------

/// 1,000 streams opened and driven from ONE client task (joined futures), 64 KiB each way
/// (echoed by the server), sha256 of what went and what came back equal.
fn thousand_streams(io: Driver, multi_thread: bool) {
    const STREAMS: usize = 1_000;
    const BYTES: usize = 64 * 1024;
    let (server, client) = pair_with(opts(io));
    runtime(multi_thread).block_on(async {
        let one_task = async {
            let streams = (0..STREAMS).map(|i| {
                let client = &client;
                async move {
                    let (mut rd, mut wr) = client.open_stream_async(None).await?.into_split();
                    let data = pattern::bytes(i as u64, BYTES);
                    let write = async {
                        wr.write_all(&data).await?;
                        wr.shutdown().await
                    };
                    let mut back = Vec::new();
                    let (w, r) = tokio::join!(write, rd.read_to_end(&mut back));
                    w?;
                    r?;
                    assert_eq!(sha256(&back), sha256(&data), "stream {i}");
                    io::Result::Ok(())
                }
            });
            try_join_all(streams).await
        };
        let (served, done) = tokio::join!(echo_server(&server, STREAMS), one_task);
        served.unwrap();
        assert_eq!(done.unwrap().len(), STREAMS);
    });
    stop(server, client);
}

/// A writer much faster than its reader (which does not read at first): its writes go
/// `Pending` once the hand-over rings, the send buffer and the peer's window are full — never
/// beyond that budget — and it is woken and finishes once the reader drains the stream. The
/// window in the budget is its auto-tuning ceiling: before the reader's hand-over ring fills, a
/// tunnel delivering late (a loaded machine) leaves a hole the worker waits on, and the window
/// may then double (`session::flow_control`).
fn backpressure(io: Driver) {
    let mut o = opts(io);
    const WINDOW: u64 = 512 * 1024;
    o.engine.stream_window = WINDOW;
    o.engine.session_window = 4 * WINDOW;
    o.engine.stream_send_buffer = 128 * 1024;
    let ceiling = o.engine.stream_window_ceiling();
    assert_eq!(ceiling, 2 * WINDOW);
    let budget = 2 * HAND_OVER + ceiling + o.engine.stream_send_buffer as u64;
    const TOTAL: usize = 8 << 20;
    let (server, client) = pair_with(o);
    runtime(false).block_on(async {
        let mut s = client.open_stream_async(None).await.unwrap();
        let mut accepted = accept(&server).await;
        let data = pattern::bytes(3, TOTAL);
        // Write until a write stays pending for 300 ms: the budget is full.
        let mut at = 0usize;
        loop {
            let piece = &data[at..(at + 16 * 1024).min(data.len())];
            match timeout(Duration::from_millis(300), s.write(piece)).await {
                Ok(n) => at += n.unwrap(),
                Err(_) => break,
            }
            assert!(at < TOTAL, "a writer with no reader was never held back");
        }
        println!("held back after {at} bytes; budget {budget}");
        assert!(
            at as u64 <= budget,
            "{at} bytes accepted, over the budget of {budget}"
        );
        assert!(at as u64 >= WINDOW, "held back too early: {at}");
        // Now read: the pending writer is woken as the stream drains and finishes.
        let write = async {
            s.write_all(&data[at..]).await.unwrap();
            s.shutdown().await.unwrap();
            s
        };
        let mut back = Vec::new();
        let (_s, read) = tokio::join!(write, accepted.read_to_end(&mut back));
        read.unwrap();
        assert_eq!(sha256(&back), sha256(&data));
    });
    stop(server, client);
}

/// poll_shutdown is a FIN: the peer reads what came, then end of stream, and may still answer;
/// writing after it is a broken pipe; a reset reaches the peer with its code; accept_async
/// ends with an error once the server has stopped.
fn shutdown_and_reset(io: Driver) {
    let (server, client) = pair_with(opts(io));
    let rt = runtime(false);
    rt.block_on(async {
        let mut s = client.open_stream_async(Some("greeting")).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let err = s.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let accepted = timeout(T, server.accept_async()).await.unwrap().unwrap();
        assert_eq!(accepted.target.as_deref(), Some("greeting"));
        let mut a = accepted.stream;
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        a.write_all(b"world").await.unwrap();
        a.shutdown().await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"world");

        // A reset: the peer's pending read fails with the code.
        let mut s = client.open_stream_async(None).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut a = accept(&server).await;
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        let reader = async {
            let mut buf = [0u8; 16];
            a.read(&mut buf).await.unwrap_err()
        };
        let resetter = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.reset(9);
        };
        let (err, ()) = tokio::join!(reader, resetter);
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let failure = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<StreamFailure>());
        assert_eq!(failure, Some(&StreamFailure::ResetByPeer(9)));
    });
    // A task waiting in accept_async when the server stops gets an error, not a hang.
    let waiting = rt.block_on(async {
        let wait = server.accept_async();
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.shutdown();
        };
        let (r, ()) = tokio::join!(timeout(T, wait), stopper);
        r.expect("woken when the server stopped")
    });
    assert_eq!(
        waiting.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    stop(server, client);
}

/// Dropping a stream mid-transfer closes it gracefully, as for the blocking type: the peer gets
/// what was written, then end of stream. A reader that drops its stream mid-transfer does not
/// stall the writer. A writer task aborted while pending closes its stream too.
fn drop_mid_transfer(io: Driver) {
    let (server, client) = pair_with(opts(io));
    runtime(true).block_on(async {
        // The server reads 1 MiB of 4 and drops its stream: the client's writes still finish.
        let data = pattern::bytes(5, 4 << 20);
        let mut s = client.open_stream_async(None).await.unwrap();
        let mut a = accept(&server).await;
        let reader = async move {
            let mut first = vec![0u8; 1 << 20];
            a.read_exact(&mut first).await.unwrap();
            drop(a);
            first
        };
        let writer = async {
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            rest
        };
        let (first, rest) = tokio::join!(reader, writer);
        assert_eq!(first, data[..1 << 20]);
        assert!(rest.is_empty());

        // A writer task aborted mid-write: its stream is dropped, the peer reads a prefix of
        // what was written, then end of stream.
        let mut s = client.open_stream_async(None).await.unwrap();
        let mut a = accept(&server).await;
        let endless = pattern::bytes(6, 1 << 20);
        let sent = endless.clone();
        let task = tokio::spawn(async move {
            loop {
                s.write_all(&sent).await.unwrap();
            }
        });
        let mut got = vec![0u8; 256 * 1024];
        a.read_exact(&mut got).await.unwrap();
        task.abort();
        let _ = task.await;
        let mut rest = Vec::new();
        timeout(T, a.read_to_end(&mut rest)).await.unwrap().unwrap();
        got.extend_from_slice(&rest);
        assert!(got.len() >= 256 * 1024);
        for (i, chunk) in got.chunks(endless.len()).enumerate() {
            assert_eq!(chunk, &endless[..chunk.len()], "chunk {i}");
        }
    });
    stop(server, client);
}

/// 200 streams x 300 round trips of 64 bytes, the client's streams in one task on a
/// multi-thread runtime while the echo tasks run on its other thread: every wait of every
/// stream is a chance to lose a wake-up, and one lost would stall its stream until the
/// watchdog fires.
fn ping_pong_hammer(io: Driver) {
    const STREAMS: usize = 200;
    const ROUNDS: usize = 300;
    let (server, client) = pair_with(opts(io));
    runtime(true).block_on(async {
        let one_task = async {
            let streams = (0..STREAMS).map(|i| {
                let client = &client;
                async move {
                    let mut s = client.open_stream_async(None).await?;
                    let mut msg = [0u8; 64];
                    let mut back = [0u8; 64];
                    for r in 0..ROUNDS {
                        msg.fill((i + r) as u8);
                        s.write_all(&msg).await?;
                        s.read_exact(&mut back).await?;
                        assert_eq!(back, msg);
                    }
                    s.shutdown().await?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).await?;
                    assert!(rest.is_empty());
                    io::Result::Ok(())
                }
            });
            try_join_all(streams).await
        };
        let (served, done) = tokio::join!(echo_server(&server, STREAMS), one_task);
        served.unwrap();
        assert_eq!(done.unwrap().len(), STREAMS);
    });
    stop(server, client);
}

/// The same stream through the futures-io traits (feature `futures-io`), on a tokio runtime
/// (any executor would do).
fn futures_io_traits(io: Driver) {
    let (server, client) = pair_with(opts(io));
    runtime(false).block_on(async {
        let mut s = client.open_stream_async(None).await.unwrap();
        let data = pattern::bytes(8, 1 << 20);
        let write = async {
            futures_util::io::AsyncWriteExt::write_all(&mut s, &data)
                .await
                .unwrap();
            futures_util::io::AsyncWriteExt::close(&mut s)
                .await
                .unwrap();
        };
        let server_side = async {
            let mut a = accept(&server).await;
            let mut got = Vec::new();
            futures_util::io::AsyncReadExt::read_to_end(&mut a, &mut got)
                .await
                .unwrap();
            got
        };
        let ((), got) = tokio::join!(write, server_side);
        assert_eq!(sha256(&got), sha256(&data));
    });
    stop(server, client);
}

#[test]
fn async_types_cross_threads() {
    fn send<T: Send>() {}
    send::<AsyncMtcpStream>();
    send::<mtcpd_engine::runtime::AsyncReadHalf>();
    send::<mtcpd_engine::runtime::AsyncWriteHalf>();
    send::<mtcpd_engine::runtime::AcceptedAsync>();
}

mod example {
    include!("../examples/tokio_echo.rs");

    pub(super) fn run() -> Result<(), String> {
        main().map_err(|e| e.to_string())
    }
}

/// The tokio example runs.
#[test]
fn the_tokio_example_runs() {
    within(120, example::run).unwrap();
}
