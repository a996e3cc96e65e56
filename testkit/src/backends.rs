//! Backends the tests connect to: an echo server and a sink that answers with a checksum.
//!
//! Each listens on a fresh loopback port and serves every connection on its own thread, with a
//! small stack and read/write timeouts, so a test that fails half-way leaves no thread blocked
//! for longer than [`IO_TIMEOUT`]. The listener thread lives as long as the test process.
//!
//! Must not touch: anything but loopback.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::pattern;

/// How long a backend connection may wait for a read or a write before giving up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves every connection to a new loopback port with `handle`, each on its own thread;
/// returns the port's address.
pub fn serve(handle: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback backend");
    deep_backlog(&listener);
    let addr = listener.local_addr().expect("backend address");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            // Thousands of connections at once in some tests: keep each thread small. A
            // connection the system has no thread for is dropped, which its test sees.
            let _ = thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || handle(conn));
        }
    });
    addr
}

/// Accept queue of a backend's listener, as deep as the daemons' own (`sockopt::LISTEN_BACKLOG`).
/// std listens with 128, and one thread accepting (and spawning a thread per connection) falls
/// behind when a test opens thousands of streams at once: the kernel then answers with SYN
/// cookies and drops the handshake's last ACK. A daemon whose first flight to that backend
/// goes out in two segments has the first dropped too, and the second fails the cookie check
/// (its sequence number is not the one the cookie was made for): the backend's kernel
/// answers with a reset (`TcpExtSyncookiesFailed`), and the stream dies for a reason that is
/// the test's, not the daemon's.
const BACKEND_BACKLOG: libc::c_int = 4096;

/// Listens again on `listener` with [`BACKEND_BACKLOG`] (Linux takes a second `listen` as a
/// new backlog; the kernel caps it at `net.core.somaxconn`).
fn deep_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: `listen` on a descriptor we own; the result is checked.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), BACKEND_BACKLOG) };
    assert_eq!(rc, 0, "listen: {}", io::Error::last_os_error());
}

/// An echo backend: sends back every byte it reads, and half-closes after the peer did.
pub fn echo_backend() -> SocketAddr {
    serve(echo)
}

/// A sink backend: reads to end of stream, then answers with a [`SinkReport`] of what it read.
pub fn sink_backend() -> SocketAddr {
    serve(sink)
}

/// Echoes `conn` until its end of stream (then half-closes) or an error.
pub fn echo(mut conn: TcpStream) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Reads `conn` to its end, then writes the SHA-256 (32 bytes) and length (8 bytes, big
/// endian) of what it read.
pub fn sink(mut conn: TcpStream) {
    let Ok(sum) = pattern::read_to_end_checksum(&mut conn) else {
        return;
    };
    let _ = conn.write_all(&sum.digest());
    let _ = conn.write_all(&sum.len().to_be_bytes());
}

/// What a sink backend read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkReport {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// How many bytes.
    pub len: u64,
}

impl SinkReport {
    /// Reads a sink backend's answer from `conn`.
    pub fn read_from(conn: &mut impl Read) -> io::Result<SinkReport> {
        let mut answer = [0; 40];
        conn.read_exact(&mut answer)?;
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(&answer[..32]);
        let mut len = [0; 8];
        len.copy_from_slice(&answer[32..]);
        Ok(SinkReport {
            sha256,
            len: u64::from_be_bytes(len),
        })
    }
}

/// Sends `total` pattern bytes of stream `seed` to a sink backend over `conn`, half-closes,
/// and returns (SHA-256 of what was sent, what the sink reports).
pub fn send_to_sink(
    mut conn: TcpStream,
    seed: u64,
    total: u64,
) -> io::Result<([u8; 32], SinkReport)> {
    let sent = pattern::write_pattern(&mut conn, seed, total)?;
    conn.shutdown(Shutdown::Write)?;
    Ok((sent, SinkReport::read_from(&mut conn)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_backend_echoes_and_half_closes() {
        let addr = echo_backend();
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let data = pattern::bytes(3, 300_000);
        let mut reader = conn.try_clone().unwrap();
        let back = thread::spawn(move || pattern::read_to_end_checksum(&mut reader).unwrap());
        conn.write_all(&data).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let back = back.join().unwrap();
        assert_eq!(
            (back.len(), back.digest()),
            (300_000, pattern::sha256(&data))
        );
    }

    #[test]
    fn the_sink_backend_reports_what_it_read() {
        let addr = sink_backend();
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (sent, report) = send_to_sink(conn, 5, 1_000_003).unwrap();
        assert_eq!(report.len, 1_000_003);
        assert_eq!(report.sha256, sent);
        assert_eq!(sent, pattern::sha256(&pattern::bytes(5, 1_000_003)));
    }
}
