// Memory per idle in-process stream at N streams, and the time to close them all and stop.
//
//   cargo run --profile ci -p mtcpd-engine --example idle_streams -- [--streams 100000]
//       [--io mio|uring] [--rounds 3]
//
// Client and server run in this process (one worker each, pool 4, default windows, max_streams
// raised to fit). Each round opens N streams, accepts them, echoes 16 bytes on the first
// 1,000 (so the path is proven to work), holds them all idle for a second, and reports: process
// RSS growth per stream (from /proc/self/statm, both ends together), live heap growth per
// stream (a counting allocator, both ends, the application's MtcpStream objects included), and
// the time from dropping every stream to both runtimes joined. Prints one line per round and the
// medians with their range.
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn opts(io: &str, streams: usize) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io: io.parse().expect("mio or uring"),
        drain_timeout: Duration::from_secs(30),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"idle-streams example key, 32 bytes or more".to_vec();
    o.engine.pool_size = 4;
    o.engine.max_streams = o.engine.max_streams.max(streams as u64 + 1024);
    o.tunnel_sockets.congestion = None;
    o
}

struct Round {
    rss: f64,
    heap: f64,
    open: Duration,
    close: Duration,
}

fn round(io: &str, n: usize) -> Round {
    let server = Server::accept_all(opts(io, n), "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::start(opts(io, n), server.local_addr()).unwrap();
    let mut held = Vec::with_capacity(2 * n);
    // Warm-up: tunnels up, loop buffers allocated.
    let mut warm = client.open_stream(None).unwrap();
    let mut warm_peer = server.accept().unwrap().stream;
    warm.write_all(b"x").unwrap();
    warm_peer.read_exact(&mut [0; 1]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, heap0) = (rss_bytes(), live_bytes());
    let t = Instant::now();
    for _ in 0..n {
        held.push(client.open_stream(None).unwrap());
    }
    for _ in 0..n {
        held.push(
            server
                .accept_timeout(Duration::from_secs(60))
                .unwrap()
                .stream,
        );
    }
    for i in 0..n.min(1000) {
        let msg = [i as u8; 16];
        held[i].write_all(&msg).unwrap();
        let mut got = [0; 16];
        held[n + i].read_exact(&mut got).unwrap();
        held[n + i].write_all(&got).unwrap();
        held[i].read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    let open = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss = (rss_bytes() as f64 - rss0 as f64) / n as f64;
    // `held` was allocated before the first reading: the two MtcpStream objects are added.
    let handles = 2 * size_of::<mtcpd_engine::runtime::MtcpStream>();
    let heap = ((live_bytes() - heap0) as f64 + (n * handles) as f64) / n as f64;
    let t = Instant::now();
    drop(held);
    drop((warm, warm_peer));
    client.shutdown();
    server.shutdown();
    std::thread::scope(|s| {
        s.spawn(move || client.join());
        s.spawn(move || server.join());
    });
    Round {
        rss,
        heap,
        open,
        close: t.elapsed(),
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut streams = 100_000;
    let mut io = String::from("mio");
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--streams" => streams = v.parse().expect("--streams N"),
            "--io" => io = v,
            "--rounds" => rounds = v.parse().expect("--rounds N"),
            _ => panic!("unknown argument {a}"),
        }
    }
    let mut all = Vec::new();
    for r in 0..rounds {
        let x = round(&io, streams);
        println!(
            "round {r}: {streams} idle streams ({io}): RSS {:.0} B/stream, heap {:.0} B/stream \
             (both ends), open+accept {:.2?}, close all + stop + join {:.2?}",
            x.rss, x.heap, x.open, x.close
        );
        all.push(x);
    }
    let (rss, rss_lo, rss_hi) = median(all.iter().map(|x| x.rss).collect());
    let (heap, heap_lo, heap_hi) = median(all.iter().map(|x| x.heap).collect());
    let (close, close_lo, close_hi) =
        median(all.iter().map(|x| x.close.as_secs_f64() * 1e3).collect());
    println!(
        "median of {rounds}: {streams} streams ({io}): RSS {rss:.0} B/stream ({rss_lo:.0}–{rss_hi:.0}), \
         heap {heap:.0} B/stream ({heap_lo:.0}–{heap_hi:.0}), close+stop {close:.0} ms \
         ({close_lo:.0}–{close_hi:.0})"
    );
}
