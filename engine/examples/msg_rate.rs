// 64-byte message rates over many in-process streams: ONE tokio current_thread task per side
// (async streams) against the blocking API with a few threads per side, alternating, same run.
//
//   cargo run --release -p mtcpd-engine --example msg_rate -- [--streams 1000,10000]
//       [--secs 3] [--rounds 3] [--threads 2]
//
// Client and server run in this process, one engine worker each, pool 8, default windows.
// one-way: every stream carries 64 B messages client → server for `secs`, then ends; the rate
// is messages received / time until the server read the last one. ping-pong: every stream
// sends 64 B and waits for the 64 B echo, again and again for `secs`; the rate is round trips
// completed / time. Prints one line per run and a table of medians (min–max).
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use mtcpd_engine::runtime::{Client, MtcpStream, RuntimeOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MSG: [u8; 64] = [0x5a; 64];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    OneWay,
    PingPong,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    /// One current_thread task per side drives every stream.
    Async,
    /// `threads` threads per side, each driving its share of the streams.
    Blocking(usize),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut streams = vec![1_000, 10_000];
    let (mut secs, mut rounds, mut threads) = (3.0_f64, 3, 2);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or("every flag takes a value")?;
        match a.as_str() {
            "--streams" => streams = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--secs" => secs = v.parse()?,
            "--rounds" => rounds = v.parse()?,
            "--threads" => threads = v.parse()?,
            _ => return Err(format!("unknown flag {a}").into()),
        }
    }
    let time = Duration::from_secs_f64(secs);
    let mut table = Vec::new();
    for &n in &streams {
        for mode in [Mode::OneWay, Mode::PingPong] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                // Alternate which goes first, so drift in the machine's load hits both.
                let order = if r % 2 == 0 {
                    [Api::Async, Api::Blocking(threads)]
                } else {
                    [Api::Blocking(threads), Api::Async]
                };
                for api in order {
                    let rate = run(api, mode, n, time)?;
                    println!("{n} streams, {mode:?}, {api:?}: {:.0} k/s", rate / 1e3);
                    if api == Api::Async {
                        a.push(rate)
                    } else {
                        b.push(rate)
                    }
                }
            }
            table.push((n, mode, summary(&mut a), summary(&mut b)));
        }
    }
    println!(
        "\n| streams | pattern | async, 1 task per side | blocking, {threads} threads per side |"
    );
    println!("|---|---|---|---|");
    for (n, mode, a, b) in table {
        let mode = if mode == Mode::OneWay {
            "one-way msg/s"
        } else {
            "ping-pong rt/s"
        };
        println!("| {n} | {mode} | {a} | {b} |");
    }
    Ok(())
}

/// "median (min–max)" in thousands.
fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    let k = |x: f64| format!("{:.0}k", x / 1e3);
    format!("{} ({}–{})", k(v[v.len() / 2]), k(v[0]), k(v[v.len() - 1]))
}

fn opts() -> RuntimeOptions {
    let mut o = RuntimeOptions {
        drain_timeout: Duration::from_secs(5),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"msg_rate benchmark key, not a secret at all".to_vec();
    o.engine.pool_size = 8;
    o.workers = 1;
    o
}

/// One measurement on a fresh client–server pair; the rate in messages (or round trips) per
/// second.
fn run(api: Api, mode: Mode, n: usize, time: Duration) -> io::Result<f64> {
    let server =
        Server::accept_all(opts(), "127.0.0.1:0".parse().unwrap()).map_err(io::Error::other)?;
    let client = Client::start(opts(), server.local_addr()).map_err(io::Error::other)?;
    let done = match api {
        Api::Async => run_async(&server, &client, mode, n, time),
        Api::Blocking(t) => run_blocking(&server, &client, mode, n, t, time),
    }?;
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
    Ok(done)
}

fn current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().build()
}

fn run_async(
    server: &Server,
    client: &Client,
    mode: Mode,
    n: usize,
    time: Duration,
) -> io::Result<f64> {
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    current_thread()?.block_on(async {
        for _ in 0..n {
            let mut s = client.open_stream_async(None).await?;
            // One message opens the stream at the server, so it can be accepted.
            s.write_all(&MSG).await?;
            ours.push(s);
            theirs.push(server.accept_async().await?.stream);
        }
        for t in &mut theirs {
            t.read_exact(&mut [0u8; 64]).await?;
        }
        io::Result::Ok(())
    })?;
    // The server side: one task on its own thread (as a separate program would have).
    let server_side = std::thread::spawn(move || {
        current_thread()?.block_on(try_join_all(theirs.into_iter().map(|mut t| async move {
            match mode {
                Mode::OneWay => {
                    let mut got = 0u64;
                    loop {
                        let b = t.read_bytes().await?;
                        if b.is_empty() {
                            return io::Result::Ok(got / 64);
                        }
                        got += b.len() as u64;
                    }
                }
                Mode::PingPong => {
                    let mut buf = [0u8; 64];
                    loop {
                        match t.read_exact(&mut buf).await {
                            Ok(_) => t.write_all(&buf).await?,
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        })))
    });
    let start = Instant::now();
    let deadline = start + time;
    let sent =
        current_thread()?.block_on(try_join_all(ours.into_iter().map(|mut s| async move {
            let mut count = 0u64;
            let mut back = [0u8; 64];
            while Instant::now() < deadline {
                s.write_all(&MSG).await?;
                if mode == Mode::PingPong {
                    s.read_exact(&mut back).await?;
                }
                count += 1;
            }
            s.shutdown().await?;
            io::Result::Ok(count)
        })))?;
    let received = server_side
        .join()
        .map_err(|_| io::Error::other("server task panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(match mode {
        Mode::OneWay => received.iter().sum::<u64>() as f64 / elapsed,
        Mode::PingPong => sent.iter().sum::<u64>() as f64 / elapsed,
    })
}

fn run_blocking(
    server: &Server,
    client: &Client,
    mode: Mode,
    n: usize,
    threads: usize,
    time: Duration,
) -> io::Result<f64> {
    let mut ours: Vec<Vec<MtcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    let mut theirs: Vec<Vec<MtcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..n {
        let mut s = client.open_stream(None)?;
        s.write_all(&MSG)?;
        ours[i % threads].push(s);
        let mut t = server.accept_timeout(Duration::from_secs(30))?.stream;
        t.read_exact(&mut [0u8; 64])?;
        theirs[i % threads].push(t);
    }
    let servers: Vec<_> = theirs
        .into_iter()
        .map(|mut mine| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut got = 0u64;
                let mut buf = [0u8; 64];
                while !mine.is_empty() {
                    let mut i = 0;
                    while i < mine.len() {
                        let t = &mut mine[i];
                        let end = match mode {
                            Mode::OneWay => {
                                let b = t.read_bytes()?;
                                got += b.len() as u64;
                                b.is_empty()
                            }
                            Mode::PingPong => match t.read_exact(&mut buf) {
                                Ok(()) => {
                                    t.write_all(&buf)?;
                                    false
                                }
                                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
                                Err(e) => return Err(e),
                            },
                        };
                        if end {
                            mine.swap_remove(i);
                        } else {
                            i += 1;
                        }
                    }
                }
                Ok(got / 64)
            })
        })
        .collect();
    let start = Instant::now();
    let deadline = start + time;
    let clients: Vec<_> = ours
        .into_iter()
        .map(|mut mine| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut count = 0u64;
                let mut back = [0u8; 64];
                while Instant::now() < deadline {
                    // Round robin: a message on every stream, then (ping-pong) every answer.
                    for s in &mut mine {
                        s.write_all(&MSG)?;
                    }
                    if mode == Mode::PingPong {
                        for s in &mut mine {
                            s.read_exact(&mut back)?;
                        }
                    }
                    count += mine.len() as u64;
                }
                for s in &mut mine {
                    s.shutdown_write()?;
                }
                Ok(count)
            })
        })
        .collect();
    let join = |h: std::thread::JoinHandle<io::Result<u64>>| {
        h.join()
            .map_err(|_| io::Error::other("a thread panicked"))?
    };
    let sent: u64 = clients.into_iter().map(join).sum::<io::Result<u64>>()?;
    let received: u64 = servers.into_iter().map(join).sum::<io::Result<u64>>()?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(match mode {
        Mode::OneWay => received as f64 / elapsed,
        Mode::PingPong => sent as f64 / elapsed,
    })
}
