//! Linux socket options the tool sets and reads: TCP_CONGESTION (set and read back) and
//! TCP_INFO (RTT, cwnd, retransmissions), plus TCP_NODELAY for latency modes.

use anyhow::{Result, bail};
use serde::Serialize;
use std::os::fd::AsRawFd;

/// Set the congestion control algorithm on a socket.
pub fn set_congestion(sock: &impl AsRawFd, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("invalid congestion control name {name:?}");
    }
    // SAFETY: valid fd, pointer/length describe `name`'s bytes.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "setsockopt TCP_CONGESTION {name:?}: {e} (see /proc/sys/net/ipv4/tcp_available_congestion_control)"
        );
    }
    Ok(())
}

/// Read back the congestion control algorithm a socket really uses.
pub fn get_congestion(sock: &impl AsRawFd) -> Option<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length match.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let s = &buf[..(len as usize).min(buf.len())];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// The TCP_INFO fields the reports show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpInfo {
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    pub snd_mss: u32,
    pub total_retrans: u32,
    pub pacing_rate_bps: u64,
    pub delivery_rate_bps: u64,
}

/// Read TCP_INFO from a socket.
pub fn tcp_info(sock: &impl AsRawFd) -> Option<TcpInfo> {
    // SAFETY: tcp_info is plain old data; zeroed is a valid value.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length match.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(TcpInfo {
        rtt_us: ti.tcpi_rtt,
        rttvar_us: ti.tcpi_rttvar,
        min_rtt_us: ti.tcpi_min_rtt,
        snd_cwnd: ti.tcpi_snd_cwnd,
        snd_mss: ti.tcpi_snd_mss,
        total_retrans: ti.tcpi_total_retrans,
        pacing_rate_bps: ti.tcpi_pacing_rate.saturating_mul(8),
        delivery_rate_bps: ti.tcpi_delivery_rate.saturating_mul(8),
    })
}

/// Set TCP_NOTSENT_LOWAT: a blocking writer then waits until the unsent queue is below `bytes`.
pub fn set_notsent_lowat(sock: &impl AsRawFd, bytes: u32) -> Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: valid fd, pointer/length describe `v`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt TCP_NOTSENT_LOWAT: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Bytes acknowledged by the peer's TCP (tcpi_bytes_acked).
pub fn tcp_bytes_acked(sock: &impl AsRawFd) -> Option<u64> {
    // SAFETY: as in `tcp_info`.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length match.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(ti.tcpi_bytes_acked)
}
