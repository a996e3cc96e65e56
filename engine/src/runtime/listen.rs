//! Listening sockets of a runtime: one copy per worker of every listen address.
//!
//! Owns: binding a listen address once per worker (the first copy alone, failing when anything
//! else serves the port; the others joining it with `SO_REUSEPORT`), and how long a start waits
//! for a port that is in use. Must not touch: what is accepted on them (the event loop's).

use std::net::SocketAddr;

use super::{RuntimeError, sockopt};

/// Listeners for `addr`, one per worker: the first binds alone (resolving port 0, and failing
/// when anything else already serves the address), the others join it with `SO_REUSEPORT` so
/// the kernel spreads incoming connections over the workers. `patient`: wait up to
/// [`BUSY_PORT_PATIENCE`] for a port in use (at start; a reload refuses at once).
pub(super) fn listeners_per_worker(
    addr: SocketAddr,
    workers: usize,
    patient: bool,
) -> Result<Vec<std::net::TcpListener>, RuntimeError> {
    let failed = |a: SocketAddr| {
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                RuntimeError::AddressInUse { addr: a }
            } else {
                RuntimeError::Listen { addr: a, source }
            }
        }
    };
    let listen = |a: SocketAddr| sockopt::listener(a, workers > 1).map_err(failed(a));
    let first = if patient {
        exclusive_listener_patiently(addr, workers > 1)
    } else {
        sockopt::exclusive_listener(addr, workers > 1)
    }
    .map_err(failed(addr))?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(listen(bound)?);
    }
    Ok(all)
}

/// How long a start waits for a port that is in use to become free: the listeners of a
/// process that just died (a crash, then a restart by the service manager) can outlive it
/// briefly while the kernel tears down its io_uring; a port a live process serves stays in use.
const BUSY_PORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// [`sockopt::exclusive_listener`], tried again for up to [`BUSY_PORT_PATIENCE`] while the
/// address is in use.
fn exclusive_listener_patiently(
    addr: SocketAddr,
    share_with_workers: bool,
) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + BUSY_PORT_PATIENCE;
    loop {
        match sockopt::exclusive_listener(addr, share_with_workers) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
