//! Socket options of tunnels and application connections, and the process's open-file limit.
//!
//! Owns: how sockets are made and tuned (TCP_NODELAY, TCP_NOTSENT_LOWAT, TCP_CONGESTION, buffer
//! sizes, SO_REUSEPORT, RST on abort), what to do when the kernel refuses an option (warn, keep
//! the system default; a refused congestion control is one warning per process, naming what the
//! kernel offers), the once-per-session line naming the congestion control the tunnels really
//! run, and raising RLIMIT_NOFILE. The option calls themselves are
//! `mtcpd_common::sockopt`, shared with mtcp-perf. Must not touch: any protocol state or event
//! loop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use mtcpd_common::sockopt as common_sockopt;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The congestion control a socket really uses (TCP_CONGESTION read back).
pub use mtcpd_common::sockopt::congestion_of;

/// How tunnel sockets are tuned.
#[derive(Debug, Clone, Default)]
pub struct TunnelSocketOptions {
    /// TCP_CONGESTION for the tunnels (e.g. "bbr"); `None` keeps the system default.
    pub congestion: Option<String>,
    /// SO_SNDBUF; `None` keeps autotuning.
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF; `None` keeps autotuning.
    pub recv_buffer: Option<usize>,
    /// TCP_NOTSENT_LOWAT at creation: unsent bytes the kernel may hold, so the scheduler
    /// decides late (the event loop raises it for a fast tunnel, `Session::tunnel_unsent_limit`).
    pub notsent_lowat: u32,
}

/// Applies the tunnel options; returns the congestion control in force. A congestion control the
/// kernel refuses is logged and the system default kept.
pub fn tune_tunnel(sock: &impl AsFd, opts: &TunnelSocketOptions) -> String {
    let sref = SockRef::from(sock);
    if let Err(e) = sref.set_nodelay(true) {
        tracing::warn!("TCP_NODELAY on tunnel: {e}");
    }
    if opts.notsent_lowat > 0
        && let Err(e) = common_sockopt::set_notsent_lowat(sock, opts.notsent_lowat)
    {
        tracing::warn!("TCP_NOTSENT_LOWAT on tunnel: {e}");
    }
    if let Some(size) = opts.send_buffer
        && let Err(e) = sref.set_send_buffer_size(size)
    {
        tracing::warn!("SO_SNDBUF {size} on tunnel: {e}");
    }
    if let Some(size) = opts.recv_buffer
        && let Err(e) = sref.set_recv_buffer_size(size)
    {
        tracing::warn!("SO_RCVBUF {size} on tunnel: {e}");
    }
    let refused = opts
        .congestion
        .as_ref()
        .and_then(|cc| common_sockopt::set_congestion(sock, cc).err());
    let used = congestion_of(sock).unwrap_or_else(|| "unknown".into());
    if let (Some(cc), Some(e)) = (&opts.congestion, refused) {
        warn_refused_congestion(cc, &e, &used);
    }
    used
}

/// The congestion controls whose refusal was already a warning (each once per process: every
/// tunnel of every session would otherwise repeat it).
static REFUSED_CONGESTION: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A congestion control the kernel refused: a warning naming what it offers and what the
/// tunnels run instead, the first time for that name; debug after.
fn warn_refused_congestion(asked: &str, e: &common_sockopt::CongestionError, used: &str) {
    let first = REFUSED_CONGESTION.lock().is_ok_and(|mut said| {
        let first = !said.iter().any(|s| s == asked);
        if first && said.len() < 16 {
            said.push(asked.to_owned());
        }
        first
    });
    if !first {
        tracing::debug!("congestion control {asked:?} not set ({e}); the tunnel runs {used:?}");
        return;
    }
    let offered = common_sockopt::available_congestion_controls().unwrap_or_else(|| "?".into());
    let hint = if offered.split_whitespace().any(|a| a == asked) {
        "it is available but not allowed to this process (net.ipv4.tcp_allowed_congestion_control)"
    } else {
        "the kernel does not have it (load its module, e.g. `modprobe tcp_<name>`)"
    };
    tracing::warn!(
        congestion = asked,
        available = %offered,
        used,
        "congestion = {asked:?} cannot be set on the tunnels ({e}): {hint}; this kernel offers \
         [{offered}]; the tunnels run the system default {used:?}"
    );
}

/// Says once per session which congestion control its tunnels really run (TCP_CONGESTION read
/// back), and warns when that is not the one configured.
pub(crate) fn log_session_congestion(session: &str, asked: Option<&str>, used: &str) {
    match asked {
        Some(asked) if asked != used => tracing::warn!(
            %session,
            congestion = used,
            asked,
            "the session's tunnels run congestion control {used:?}, not the configured {asked:?}"
        ),
        _ => tracing::info!(
            %session,
            congestion = used,
            "the session's tunnels run congestion control {used:?}"
        ),
    }
}

/// Application-side sockets: no Nagle delay (the tunnel batches anyway).
pub fn tune_app(sock: &impl AsFd) {
    let _ = SockRef::from(sock).set_nodelay(true);
}

/// Makes the next close send RST instead of FIN (a reset stream aborts its connection).
pub fn abort_on_close(sock: &impl AsFd) {
    let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Accept queue of every listener (the kernel caps it at `net.core.somaxconn`, 4096 by
/// default). A burst of thousands of connects lands while the loop is busy with something
/// else; a full queue drops SYNs and each dropped one waits out a 1 s retransmission.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener with SO_REUSEADDR (and SO_REUSEPORT, for one listener per worker).
pub fn listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock.into())
}

/// The first listener of a process on `addr`: bound WITHOUT SO_REUSEPORT, so the bind fails
/// (EADDRINUSE) when any other socket, with SO_REUSEPORT or not, already holds the address:
/// another mtcpd, or any other program. Only once bound is SO_REUSEPORT turned on (when
/// `share_with_workers`), so this process's other workers can join it with [`listener`].
/// Race-free: the exclusive bind is the check, and a later process's own first bind (also
/// without SO_REUSEPORT) conflicts with this one.
pub fn exclusive_listener(
    addr: SocketAddr,
    share_with_workers: bool,
) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    if share_with_workers {
        sock.set_reuse_port(true)?;
    }
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock.into())
}

/// Starts a non-blocking connect; the socket becomes writable when it completes or fails.
pub fn connect_nonblocking(
    addr: SocketAddr,
    tunnel: Option<&TunnelSocketOptions>,
) -> io::Result<(std::net::TcpStream, Option<String>)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    // Options that shape the connection go on before the SYN.
    let cc = tunnel.map(|opts| tune_tunnel(&sock, opts));
    if tunnel.is_none() {
        tune_app(&sock);
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok((sock.into(), cc))
}

/// Raises the open-file soft limit to the hard limit; returns (soft before, soft now, hard).
pub fn raise_nofile_limit() -> io::Result<(u64, u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok((before, lim.rlim_cur, lim.rlim_max))
}

/// Accepts one queued connection of listener `fd` and closes it with a reset, without waiting
/// if none is queued (`Ok(None)`; the listener may be in blocking mode, as io_uring's are).
/// Gives the peer (unspecified if it is already gone). For shedding connections when the
/// process is out of descriptors: the caller has freed one for this.
pub fn accept_and_reset(fd: std::os::fd::RawFd) -> io::Result<Option<SocketAddr>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 || poll.revents & libc::POLLIN == 0 {
        return Ok(None);
    }
    // SAFETY: `fd` is a listening socket the caller owns; no address is asked for.
    let conn = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if conn < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
    let conn = Socket::from(unsafe { OwnedFd::from_raw_fd(conn) });
    let peer = conn
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = conn.set_linger(Some(Duration::ZERO));
    Ok(Some(peer))
}
