//! Linux TCP socket options as typed calls: TCP_CONGESTION (set and read back),
//! TCP_NOTSENT_LOWAT, and TCP_INFO as a [`TcpInfo`] struct.
//!
//! Owns: the `getsockopt`/`setsockopt` calls and their buffers (the only `unsafe` of this crate).
//! Must not touch: which options a given socket gets or what to do when the kernel refuses one;
//! the callers decide that (the engine's `runtime::sockopt` warns and keeps the system default,
//! mtcp-perf fails the run).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Longest congestion control name the kernel accepts (TCP_CA_NAME_MAX is 16, with the NUL).
const CONGESTION_NAME_MAX: usize = 15;

/// Why a congestion control could not be set.
#[derive(Debug, thiserror::Error)]
pub enum CongestionError {
    /// Not a name the kernel could know: empty, too long, or not `[A-Za-z0-9_]`.
    #[error("invalid congestion control name {0:?}")]
    InvalidName(String),
    /// The kernel refused it (usually: module not loaded or not allowed).
    #[error(
        "setsockopt TCP_CONGESTION {name:?}: {source} (see /proc/sys/net/ipv4/tcp_available_congestion_control)"
    )]
    Refused {
        /// The name asked for.
        name: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

fn setsockopt(sock: &impl AsFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: the fd is open for the lifetime of the borrow, and `value` is a valid buffer of
    // the given length for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the congestion control algorithm (e.g. "bbr", "cubic") of a TCP socket.
pub fn set_congestion(sock: &impl AsFd, name: &str) -> Result<(), CongestionError> {
    let plausible = !name.is_empty()
        && name.len() <= CONGESTION_NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plausible {
        return Err(CongestionError::InvalidName(name.to_owned()));
    }
    setsockopt(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_CONGESTION,
        name.as_bytes(),
    )
    .map_err(|source| CongestionError::Refused {
        name: name.to_owned(),
        source,
    })
}

/// The congestion controls this kernel offers (`/proc/sys/net/ipv4/tcp_available_congestion_control`,
/// space-separated); `None` when that cannot be read.
pub fn available_congestion_controls() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The congestion control a socket really uses (TCP_CONGESTION read back); `None` if the
/// socket is not TCP or the call fails.
pub fn congestion_of(sock: &impl AsFd) -> Option<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` are valid for writing and describe the same buffer; the fd is
    // open for the lifetime of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = &buf[..(len as usize).min(buf.len())];
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Sets TCP_NOTSENT_LOWAT: the socket is writable (and a blocking writer proceeds) only while
/// fewer than `bytes` unsent bytes are queued in the kernel.
pub fn set_notsent_lowat(sock: &impl AsFd, bytes: u32) -> io::Result<()> {
    setsockopt(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        &bytes.to_ne_bytes(),
    )
}

/// Reads TCP_NOTSENT_LOWAT back: 0 when it was never set on this socket (then
/// `net.ipv4.tcp_notsent_lowat` applies, by default no limit).
pub fn notsent_lowat(sock: &impl AsFd) -> io::Result<u32> {
    let mut value = 0u32;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writing and describe the same 4-byte buffer; the
    // fd is open for the lifetime of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The TCP_INFO fields mtcpd and mtcp-perf report (rates in bits per second).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TcpInfo {
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// Round-trip time variation, µs.
    pub rttvar_us: u32,
    /// Smallest round-trip time seen, µs.
    pub min_rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Sender's maximum segment size, bytes.
    pub snd_mss: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Pacing rate, bit/s.
    pub pacing_rate_bps: u64,
    /// Latest delivery-rate estimate, bit/s.
    pub delivery_rate_bps: u64,
    /// Bytes in the network: segments sent and neither acknowledged, selectively acknowledged
    /// nor presumed lost, plus retransmissions in flight (the kernel's
    /// `tcp_packets_in_flight`), times the MSS. Segments the receiver holds beyond a hole
    /// (SACKed) are not in it: they wait in the receiver, not in a queue on the path.
    pub in_flight_bytes: u64,
    /// Bytes written to the socket and not sent yet (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Bytes the peer received over the connection's life, counted as they arrive even beyond
    /// a hole: the cumulatively acknowledged bytes (`tcpi_bytes_acked`) plus the selectively
    /// acknowledged segments beyond the hole (`tcpi_sacked`) times the MSS (those may be
    /// short, so this can run a little ahead and then step back once the hole fills).
    pub delivered_bytes: u64,
}

fn raw_tcp_info(sock: &impl AsFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writing and describe the same buffer (the kernel
    // writes at most `len` bytes); the fd is open for the lifetime of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Reads TCP_INFO; `None` if the socket is not TCP or the call fails.
pub fn tcp_info(sock: &impl AsFd) -> Option<TcpInfo> {
    let info = raw_tcp_info(sock)?;
    Some(TcpInfo {
        rtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        min_rtt_us: info.tcpi_min_rtt,
        snd_cwnd: info.tcpi_snd_cwnd,
        snd_mss: info.tcpi_snd_mss,
        total_retrans: info.tcpi_total_retrans,
        pacing_rate_bps: info.tcpi_pacing_rate.saturating_mul(8),
        delivery_rate_bps: info.tcpi_delivery_rate.saturating_mul(8),
        in_flight_bytes: u64::from(
            info.tcpi_unacked
                .saturating_sub(info.tcpi_sacked.saturating_add(info.tcpi_lost))
                .saturating_add(info.tcpi_retrans),
        ) * u64::from(info.tcpi_snd_mss),
        notsent_bytes: info.tcpi_notsent_bytes,
        delivered_bytes: info
            .tcpi_bytes_acked
            .saturating_add(u64::from(info.tcpi_sacked) * u64::from(info.tcpi_snd_mss)),
    })
}

/// Bytes the peer's TCP has acknowledged (tcpi_bytes_acked).
pub fn tcp_bytes_acked(sock: &impl AsFd) -> Option<u64> {
    raw_tcp_info(sock).map(|info| info.tcpi_bytes_acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn congestion_is_set_and_read_back() {
        let (client, _server) = loopback_pair();
        // reno is built into every Linux kernel.
        set_congestion(&client, "reno").unwrap();
        assert_eq!(congestion_of(&client).as_deref(), Some("reno"));
    }

    #[test]
    fn implausible_and_unknown_congestion_names_are_refused() {
        let (client, _server) = loopback_pair();
        assert!(matches!(
            set_congestion(&client, "no such/cc"),
            Err(CongestionError::InvalidName(_))
        ));
        let refused = set_congestion(&client, "nosuchcc").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("tcp_available_congestion_control")
        );
    }

    #[test]
    fn tcp_info_counts_acknowledged_bytes() {
        let (mut client, mut server) = loopback_pair();
        assert_eq!(notsent_lowat(&client).unwrap(), 0, "never set");
        set_notsent_lowat(&client, 128 * 1024).unwrap();
        assert_eq!(notsent_lowat(&client).unwrap(), 128 * 1024);
        client.write_all(&[7u8; 4096]).unwrap();
        let mut got = [0u8; 4096];
        server.read_exact(&mut got).unwrap();
        // Loopback acknowledges almost at once; allow the ACK a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while tcp_bytes_acked(&client).unwrap() < 4096 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(tcp_bytes_acked(&client).unwrap() >= 4096);
        let info = tcp_info(&client).unwrap();
        assert!(info.snd_mss > 0 && info.snd_cwnd > 0);
        // Everything written was acknowledged: nothing is in flight or waiting to be sent.
        assert_eq!((info.in_flight_bytes, info.notsent_bytes), (0, 0));
    }
}
