//! `mtcp-perf relay` through the real binary: bytes arrive intact both ways (checksummed, large
//! enough to fill socket buffers so the relay has to hold bytes back), EOF is passed on in each
//! direction, a finished connection leaves no descriptor behind, two relays chain like in
//! `socket-scale.sh`, and `--max-conns` closes the connection over the cap.

mod common;

use common::spawn_listening;
use mtcpd_testkit::process::ChildGuard;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes each way per connection: far more than loopback socket buffers hold.
const LEN: usize = 4 << 20;

/// A running relay and the address it listens on.
struct Relay {
    process: ChildGuard,
    addr: String,
}

fn relay(to: &str, extra: &[&str]) -> Relay {
    let mut args = vec![
        "relay",
        "-l",
        "127.0.0.1:0",
        "--to",
        to,
        "--max-time",
        "120s",
    ];
    args.extend_from_slice(extra);
    let (process, addr) = spawn_listening(&args);
    Relay { process, addr }
}

/// Deterministic bytes, different per stream and direction.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a: a mismatch anywhere (lost, duplicated, reordered byte) changes it.
fn sum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Sends `out` and half-closes while reading everything that comes back until EOF.
fn exchange(s: TcpStream, out: Vec<u8>) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&out).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

/// A target that, per connection, sends its own stream and returns the checksum of what it
/// received before EOF (so both directions are checked, independently of each other).
fn target() -> (String, thread::JoinHandle<Vec<u64>>, usize) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = 4;
    let h = thread::spawn(move || {
        let mut handlers = Vec::new();
        for i in 0..conns {
            let (s, _) = l.accept().unwrap();
            handlers.push(thread::spawn(move || {
                sum(&exchange(s, bytes(1000 + i as u64, LEN)))
            }));
        }
        handlers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (addr, h, conns)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (bounded) until the relay holds `want` descriptors.
fn wait_descriptors(pid: u32, want: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while descriptors(pid) != want {
        assert!(
            Instant::now() < end,
            "relay holds {} descriptors, expected {want}",
            descriptors(pid)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the target's connections through `entry`, checking every byte both ways.
fn check_through(entry: &str, target: thread::JoinHandle<Vec<u64>>, conns: usize) {
    let clients: Vec<_> = (0..conns)
        .map(|i| {
            let entry = entry.to_string();
            thread::spawn(move || {
                let s = TcpStream::connect(&entry).unwrap();
                let out = bytes(i as u64, LEN);
                (sum(&out), exchange(s, out))
            })
        })
        .collect();
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for c in clients {
        let (s, back) = c.join().unwrap();
        assert_eq!(back.len(), LEN, "bytes back from the target");
        sent.push(s);
        received.push(sum(&back));
    }
    // The target saw each client's bytes intact (order of accepts is not the clients' order).
    let mut at_target = target.join().unwrap();
    at_target.sort_unstable();
    sent.sort_unstable();
    assert_eq!(at_target, sent, "upstream bytes");
    let mut want: Vec<u64> = (0..conns)
        .map(|i| sum(&bytes(1000 + i as u64, LEN)))
        .collect();
    want.sort_unstable();
    received.sort_unstable();
    assert_eq!(received, want, "downstream bytes");
}

#[test]
fn relay_moves_checksummed_bytes_both_ways_and_closes_cleanly() {
    let (to, target, conns) = target();
    let mut r = relay(&to, &[]);
    let pid = r.process.child_mut().unwrap().id();
    let idle = descriptors(pid);
    check_through(&r.addr, target, conns);
    // Both directions ended: the relay closed both sockets of every pair.
    wait_descriptors(pid, idle);
}

#[test]
fn two_relays_chain() {
    let (to, target, conns) = target();
    let mut second = relay(&to, &[]);
    let mut first = relay(&second.addr, &[]);
    let (p1, p2) = (
        first.process.child_mut().unwrap().id(),
        second.process.child_mut().unwrap().id(),
    );
    let (idle1, idle2) = (descriptors(p1), descriptors(p2));
    check_through(&first.addr, target, conns);
    wait_descriptors(p1, idle1);
    wait_descriptors(p2, idle2);
}

#[test]
fn relay_refuses_connections_over_max_conns() {
    // A target that holds every connection open and answers nothing.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap().to_string();
    let holder = thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(l.accept().unwrap().0);
        }
        thread::sleep(Duration::from_secs(5));
    });
    let r = relay(&to, &["--max-conns", "2"]);
    let mut kept: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&r.addr).unwrap())
        .collect();
    // Give the relay time to accept both before the third arrives.
    thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(&r.addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    match over.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the cap was not closed: {other:?}"),
    }
    // The two under the cap are still relayed: nothing closed them.
    for s in &mut kept {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let e = s.read(&mut b).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        );
    }
    holder.join().unwrap();
}

#[test]
fn fin_right_behind_data_is_passed_on() {
    // Each client writes one message and its FIN at once: the relay often reads both from one
    // wake-up, and must still see the EOF (no further edge comes for it) and close the pair.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap().to_string();
    let conns = 200;
    let target = thread::spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        }
    });
    let mut r = relay(&to, &[]);
    let pid = r.process.child_mut().unwrap().id();
    let idle = descriptors(pid);
    for i in 0..conns {
        let mut s = TcpStream::connect(&r.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let msg = bytes(i, 64);
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, msg, "connection {i}");
    }
    target.join().unwrap();
    wait_descriptors(pid, idle);
}
