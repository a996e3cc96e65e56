//! A server out of file descriptors, on each I/O driver: this test process lowers its own
//! RLIMIT_NOFILE (soft and hard, to 256, so the runtime cannot raise it again), starts a server,
//! takes every free descriptor itself, then connects to the server with sockets made
//! beforehand. The server must close those connections at once (its spare descriptor), spend
//! little CPU meanwhile (no busy loop on EMFILE), and serve a real client once descriptors are
//! free again. Only this scenario is in this binary (the limit is the whole process's), and its
//! runs take turns (a lock).

mod runtime_support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{self, ClientForward, RuntimeOptions};
use mtcpd_testkit::{Driver, backends, driver_tests, pattern};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The process's descriptor limit during the test.
const NOFILE: u64 = 256;
/// Connections made while the process is out of descriptors.
const QUEUED: usize = 24;
/// They arrive one per this, so the server sees several failed accepts in a row.
const SPACING: Duration = Duration::from_millis(60);
/// CPU time (user + system, all threads) the process may use while they arrive: a loop that
/// retried accept without waiting would use about the whole wall time.
const CPU_BUDGET: Duration = Duration::from_millis(400);

static ALONE: Mutex<()> = Mutex::new(());

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-emfile-test-key-0123456789abcdef",
        2,
        Duration::from_secs(2),
    );
    o.workers = 1;
    o
}

fn lower_nofile() {
    let lim = libc::rlimit {
        rlim_cur: NOFILE,
        rlim_max: NOFILE,
    };
    // SAFETY: a valid rlimit; lowering needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// User plus system CPU time of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid to write into.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for writing.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time per thread of this process (name: ticks of user + system time), to say which
/// thread spun if one did.
fn cpu_per_thread() -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // "pid (name) state ..." with utime and stime the 14th and 15th fields.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.replace(" (", ":");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((name, ticks(11) + ticks(12)));
    }
    out
}

/// Opens /dev/null until the process has no descriptor left.
fn exhaust() -> Vec<File> {
    let mut held = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        held.push(file);
    }
    held
}

/// Whether the server closed `sock` (end of stream or reset) within `limit`.
fn closed_within(sock: &Socket, limit: Duration) -> bool {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16];
    match sock.recv(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn echo_through_new_client(io: Driver, server: SocketAddr) {
    let client = runtime::spawn_client(
        opts(io),
        server,
        &[ClientForward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: None,
            name: None,
        }],
    )
    .unwrap();
    let mut app = TcpStream::connect(client.local_addrs()[0]).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = app.try_clone().unwrap();
    let echo = std::thread::spawn(move || pattern::read_to_end_checksum(&mut reader).unwrap());
    let sent = pattern::write_pattern(&mut app, 3, 256 * 1024).unwrap();
    app.flush().unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    let got = echo.join().unwrap();
    assert_eq!(got.digest(), sent, "{io}: echo after recovery");
    let mut rest = Vec::new();
    let _ = app.read_to_end(&mut rest);
    client.shutdown();
    client.join();
}

driver_tests! {
    #[within(120)]
    fn out_of_descriptors_the_server_sheds_queued_connections_without_spinning(io) {
        let _alone = ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        out_of_descriptors(io);
    }
}

fn out_of_descriptors(io: Driver) {
    lower_nofile();
    // The backend starts once descriptors are free again: a thread blocked in accept on a
    // listener that a stray connection reaches would spin on EMFILE meanwhile (and take the
    // descriptor the server frees to shed), which is not what this test measures.
    let backend: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
    let route_to = backend.clone();
    let server = runtime::spawn_server(
        opts(io),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |_| match route_to.get() {
            Some(addr) => runtime::Route::Connect(*addr),
            None => runtime::Route::Refuse,
        }),
    )
    .unwrap();
    let addr = SockAddr::from(server.local_addrs()[0]);
    // Sockets made now: connecting them later needs no new descriptor.
    let socks: Vec<Socket> = (0..QUEUED)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap())
        .collect();
    let fillers = exhaust();
    assert!(
        File::open("/dev/null").is_err(),
        "{io}: the process is out of descriptors"
    );

    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut reset_at_once = 0;
    for sock in &socks {
        // The kernel completes the connection into the listen queue; the server cannot take
        // it with a descriptor of its own, and closes it with its spare (sometimes before
        // the connect is seen to complete).
        match sock.connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset_at_once += 1,
            Err(e) => panic!("{io}: connect: {e}"),
        }
        std::thread::sleep(SPACING);
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_time() - cpu_before;
    let wall = started.elapsed();
    let closed = socks
        .iter()
        .filter(|sock| closed_within(sock, Duration::from_secs(2)))
        .count();
    eprintln!("{io}: {reset_at_once} connections were reset before connect returned");
    eprintln!(
        "{io}: out of descriptors for {wall:?}: {closed} of {QUEUED} queued connections closed \
         by the server, process CPU {cpu:?} (budget {CPU_BUDGET:?})"
    );
    // Descriptors free again (reading /proc needs one).
    drop(fillers);
    drop(socks);
    let threads = cpu_per_thread();
    assert_eq!(
        closed, QUEUED,
        "{io}: queued connections left hanging (CPU ticks per thread: {threads:?})"
    );
    assert!(
        cpu < CPU_BUDGET,
        "{io}: {cpu:?} of CPU in {wall:?}: a busy loop (ticks per thread: {threads:?})"
    );

    // A real client gets a session.
    let _ = backend.set(backends::echo_backend());
    let recovered = Instant::now();
    echo_through_new_client(io, server.local_addrs()[0]);
    eprintln!(
        "{io}: after the descriptors were freed a client echoed 256 KiB in {:?}",
        recovered.elapsed()
    );
    server.shutdown();
    server.join();
}
