//! The driver on its own, over loopback sockets: the buffer ring running dry, slow readers,
//! the multishot receive staying armed and being armed again, and the fallback without a ring.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::super::io::{Driver, IoStream};
use super::{Uring, UringStream, lock};

/// Byte `j` of connection `i`'s test stream: differs between connections and along a stream.
fn pattern(i: usize, j: usize) -> u8 {
    (i.wrapping_mul(131) ^ j.wrapping_mul(7) ^ (j >> 9)) as u8
}

/// `n` loopback connections: the client ends (std, blocking) and the server ends registered with
/// `driver` under tokens `0..n`.
fn pairs(driver: &mut Uring, n: usize) -> (Vec<TcpStream>, Vec<UringStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for token in 0..n {
        clients.push(TcpStream::connect(addr).unwrap());
        let (sock, _) = listener.accept().unwrap();
        let mut s = driver.stream(sock).unwrap();
        driver.register_stream(&mut s, token, false).unwrap();
        servers.push(s);
    }
    (clients, servers)
}

/// Reads every socket of `servers` that has an event, except those `skip` says to leave alone
/// this turn, into `got`, until each has `want` bytes or `deadline` passes; checks every byte.
fn pump(
    driver: &mut Uring,
    servers: &mut [UringStream],
    got: &mut [BytesMut],
    want: usize,
    mut skip: impl FnMut(usize, usize) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = Vec::new();
    let mut skipped: Vec<usize> = Vec::new();
    let mut turn = 0;
    while got.iter().any(|g| g.len() < want) {
        assert!(
            Instant::now() < deadline,
            "stalled: {} of {} connections complete",
            got.iter().filter(|g| g.len() >= want).count(),
            got.len()
        );
        driver.wait(Duration::from_millis(50), &mut ready).unwrap();
        turn += 1;
        // A reader that skipped a socket comes back to it by itself (no event is owed).
        let mut todo: Vec<usize> = ready.drain(..).map(|(t, _, _)| t).collect();
        todo.append(&mut skipped);
        todo.sort_unstable();
        todo.dedup();
        for t in todo {
            if skip(t, turn) {
                skipped.push(t);
                continue;
            }
            loop {
                // Half the sockets are read as the application path does (whole buffers handed
                // over when well filled), half as a tunnel (appended).
                let read = if t % 2 == 1 {
                    servers[t].read_bytes(&mut []).map(|b| {
                        got[t].extend_from_slice(&b);
                        b.len()
                    })
                } else {
                    servers[t].read_append(&mut got[t], &mut [])
                };
                match read {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("connection {t}: {e}"),
                }
            }
        }
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.len(), want, "connection {i}");
        if let Some(j) = (0..want).find(|&j| g[j] != pattern(i, j)) {
            panic!("connection {i}: byte {j} is wrong");
        }
    }
}

/// Many sockets with more unread data than the whole ring holds, some of them read late: every
/// byte arrives in order, the ring ran dry and recovered, and all buffers are back at the end.
fn exhaust(buffers: u16) {
    const CONNS: usize = 48;
    const EACH: usize = 96 * 1024;
    let (mut driver, _waker) = Uring::with_ring(4096, buffers).unwrap();
    let (clients, mut servers) = pairs(&mut driver, CONNS);
    let writer = std::thread::spawn(move || {
        let mut clients = clients;
        for (i, c) in clients.iter_mut().enumerate() {
            let data: Vec<u8> = (0..EACH).map(|j| pattern(i, j)).collect();
            c.write_all(&data).unwrap();
        }
        clients
    });
    let mut got = vec![BytesMut::new(); CONNS];
    // Every third connection is a slow reader for its first 30 turns.
    pump(&mut driver, &mut servers, &mut got, EACH, |t, turn| {
        t % 3 == 0 && turn < 30
    });
    let clients = writer.join().unwrap();
    drop(clients);
    // Each sees the end of its stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut eof = [false; CONNS];
    let mut ready = Vec::new();
    let mut buf = [0u8; 64];
    while eof.iter().any(|e| !e) {
        assert!(Instant::now() < deadline, "end of stream not seen");
        for (i, s) in servers.iter_mut().enumerate() {
            if !eof[i] {
                eof[i] = matches!(s.read(&mut buf), Ok(0));
            }
        }
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        ready.clear();
    }
    let mut c = lock(&driver.core);
    c.spill();
    if let Some(r) = &c.bufs {
        assert!(
            r.dry > 0,
            "{CONNS} × {EACH} B never ran a ring of {buffers} dry: the test does not test it"
        );
        assert_eq!(
            r.free(),
            usize::from(buffers),
            "every buffer back in the ring"
        );
    }
}

#[test]
fn ring_exhausted_by_many_sockets_delivers_every_byte_in_order() {
    exhaust(8);
}

#[test]
fn without_a_ring_each_socket_receives_into_its_own_buffer() {
    exhaust(0);
}

#[test]
fn idle_sockets_hold_no_receive_buffer() {
    let (mut driver, _waker) = Uring::with_ring(64 * 1024, 64).unwrap();
    let (mut clients, mut servers) = pairs(&mut driver, 200);
    // One message each (the first page of a buffer gets written), then idle.
    for c in &mut clients {
        c.write_all(b"hello").unwrap();
    }
    let mut got = vec![BytesMut::new(); 200];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = Vec::new();
    while got.iter().any(|g| g.len() < 5) {
        assert!(Instant::now() < deadline);
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        for (t, _, _) in ready.drain(..) {
            while servers[t].read_append(&mut got[t], &mut []).is_ok() {}
        }
    }
    driver.wait(Duration::ZERO, &mut ready).unwrap();
    let c = lock(&driver.core);
    let r = c.bufs.as_ref().unwrap();
    // 200 sockets, each with a receive armed, and every buffer in the ring.
    assert_eq!(r.free(), usize::from(r.count()));
    for s in &servers {
        let sock = &c.socks[s.id];
        assert!(sock.recv_op.is_some(), "a receive is armed");
        assert!(
            sock.rx.is_empty() && sock.spare.capacity() == 0,
            "and nothing is held"
        );
    }
}

/// Reads until `msg` has arrived (waiting on the driver when it would block) and checks it.
fn read_one(driver: &mut Uring, s: &mut UringStream, msg: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ready = Vec::new();
    while got.len() < msg.len() {
        assert!(Instant::now() < deadline, "message not received");
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                driver.wait(Duration::from_millis(20), &mut ready).unwrap();
                ready.clear();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, msg);
}

#[test]
fn multishot_receive_stays_armed_and_is_armed_again_after_a_slow_read() {
    let (mut driver, _waker) = Uring::with_ring(4096, 16).unwrap();
    let (mut clients, mut servers) = pairs(&mut driver, 1);
    let mut ready = Vec::new();
    let mut buf = [0u8; 4096];
    let id = servers[0].id;
    let op_of = |driver: &Uring| lock(&driver.core).socks[id].recv_op;
    let arms = |driver: &Uring| lock(&driver.core).multishots;
    clients[0].write_all(b"first").unwrap();
    read_one(&mut driver, &mut servers[0], b"first");
    assert!(op_of(&driver).is_some(), "a multishot receive is armed");
    let armed = arms(&driver);
    for i in 0..20 {
        let msg = format!("message {i}");
        clients[0].write_all(msg.as_bytes()).unwrap();
        read_one(&mut driver, &mut servers[0], msg.as_bytes());
        // One submission served every message: no receive was armed per message.
        assert!(op_of(&driver).is_some());
        assert_eq!(arms(&driver), armed, "the same receive after message {i}");
    }
    // A slow reader: data arrives and the loop leaves it for a turn. The turn's end copies it
    // out of the ring and ends the multishot (flow control, as with one receive at a time).
    clients[0].write_all(b"left for later").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(&driver.core).socks[id].rx.is_empty() {
        assert!(Instant::now() < deadline, "data not received");
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        ready.clear();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while op_of(&driver).is_some() {
        assert!(
            Instant::now() < deadline,
            "the slow reader's receive was not ended"
        );
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        ready.clear();
    }
    let c = lock(&driver.core);
    let r = c.bufs.as_ref().unwrap();
    assert_eq!(r.free(), usize::from(r.count()));
    drop(c);
    // More arrives while no receive is armed: the kernel's socket buffer holds it.
    clients[0].write_all(b" and more").unwrap();
    read_one(&mut driver, &mut servers[0], b"left for later and more");
    assert!(
        op_of(&driver).is_some(),
        "armed again once the reader caught up"
    );
    assert_eq!(arms(&driver), armed + 1);
    clients[0].write_all(b"after").unwrap();
    read_one(&mut driver, &mut servers[0], b"after");
    // The end of the stream ends the multishot and is reported.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "end of stream not seen");
        match servers[0].read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                driver.wait(Duration::from_millis(20), &mut ready).unwrap();
                ready.clear();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(op_of(&driver).is_none());
}

/// A cancellation queued for an operation that ended meanwhile, its key taken by the next
/// operation, leaves the next one alone: operations are named by key and generation.
#[test]
fn a_stale_cancellation_does_not_end_the_operation_that_reused_its_key() {
    use io_uring::opcode;

    use super::ring::{UNTRACKED, tag};

    let (mut driver, _waker) = Uring::with_ring(4096, 16).unwrap();
    let (mut clients, mut servers) = pairs(&mut driver, 1);
    let id = servers[0].id;
    clients[0].write_all(b"armed").unwrap();
    read_one(&mut driver, &mut servers[0], b"armed");
    let op_of = |driver: &Uring| {
        let c = lock(&driver.core);
        c.socks[id].recv_op.map(|k| (k, c.ops[k].generation))
    };
    let (key, generation) = op_of(&driver).expect("a multishot receive is armed");
    // End it: with nothing queued, its completion arms the next receive at once, which takes
    // the freed key.
    lock(&driver.core).cancel([key]);
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while op_of(&driver) == Some((key, generation)) {
        assert!(
            Instant::now() < deadline,
            "the cancelled receive did not end"
        );
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        ready.clear();
    }
    let next = op_of(&driver).expect("armed again");
    assert_eq!(next.0, key, "the next receive reuses the key");
    let arms = lock(&driver.core).multishots;
    // The cancellation a turn's end queued for the first receive reaches the kernel only now.
    lock(&driver.core).push(
        opcode::AsyncCancel::new(tag(key, generation))
            .build()
            .user_data(UNTRACKED),
    );
    for _ in 0..5 {
        driver.wait(Duration::from_millis(20), &mut ready).unwrap();
        ready.clear();
    }
    assert_eq!(
        op_of(&driver),
        Some(next),
        "the next receive is still armed"
    );
    assert_eq!(
        lock(&driver.core).multishots,
        arms,
        "and was not armed again"
    );
    clients[0].write_all(b"still received").unwrap();
    read_one(&mut driver, &mut servers[0], b"still received");
}

/// A ring the kernel refuses (here: a size it rejects, as a kernel before 5.19 rejects any)
/// leaves the driver working with a receive buffer per socket.
#[test]
fn a_refused_ring_falls_back_to_a_buffer_per_socket() {
    let (mut driver, _waker) = Uring::with_ring(4096, 3).unwrap();
    assert!(lock(&driver.core).bufs.is_none(), "no ring");
    let (mut clients, mut servers) = pairs(&mut driver, 2);
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("socket {i}").as_bytes()).unwrap();
    }
    for (i, s) in servers.iter_mut().enumerate() {
        read_one(&mut driver, s, format!("socket {i}").as_bytes());
    }
}
