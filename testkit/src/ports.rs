//! Loopback ports for the daemons a test starts, never handed to two tests at once.
//!
//! A test that starts a daemon must name its port up front. "Bind port 0, read it, close"
//! is not enough: mtcpd binds with `SO_REUSEPORT`, so two daemons given the same port by two
//! tests running at once both bind it and share its connections. A [`PortLease`] also holds an
//! exclusive `flock` on a per-port file in the temporary directory for as long as it lives, so
//! every other test (thread or process) using this module skips that port.
//!
//! [`listening_within`] waits for a daemon to listen on its port.
//!
//! Must not touch: ports outside 20000..32000 (below the kernel's ephemeral range, so the
//! outgoing connections of tests cannot take a port between the check and the daemon's bind).

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A loopback port reserved for one test until dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: File,
}

impl PortLease {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("mtcpd-test-ports")
}

/// Reserves a loopback port that is free now and leased to no other test.
pub fn reserve_port() -> PortLease {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).expect("port lock directory");
    // Different processes start at different places, so they rarely even try the same ports.
    let salt = u64::from(std::process::id()).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (salt.wrapping_add(n.wrapping_mul(104_729)) % 12_000) as u16;
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
        else {
            continue;
        };
        // SAFETY: flock(2) on a descriptor this function owns; non-blocking.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return PortLease { port, _lock: file };
        }
    }
    panic!("no free port in 20000..32000");
}

/// Polls `addr` (a connect every 20 ms, each given 200 ms) until something accepts or `limit`
/// has passed; whether something did.
pub fn listening_within(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_within_sees_a_listener_and_times_out_without_one() {
        let lease = reserve_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], lease.port()));
        let started = Instant::now();
        assert!(!listening_within(addr, Duration::from_millis(100)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        let _listener = TcpListener::bind(addr).expect("bind the leased port");
        assert!(listening_within(addr, Duration::from_secs(5)));
    }

    #[test]
    fn leases_held_at_once_are_distinct_and_free() {
        let leases: Vec<PortLease> = (0..50).map(|_| reserve_port()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50);
        for port in ports {
            assert!((20_000..32_000).contains(&port));
            TcpListener::bind(("127.0.0.1", port)).expect("a leased port is free");
        }
    }

    #[test]
    fn a_leased_port_is_skipped_until_released() {
        let lease = reserve_port();
        let path = lock_dir().join(format!("{}.lock", lease.port()));
        let other = File::open(&path).unwrap();
        // SAFETY: flock(2) on a descriptor this test owns; non-blocking.
        let taken = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(taken, 0, "a held lease must block other lockers");
        drop(lease);
        // SAFETY: as above.
        let taken = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(taken, 0, "a released lease frees the port");
    }
}
