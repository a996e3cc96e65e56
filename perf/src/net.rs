//! Client-side connection helpers shared by every mode: address resolution and a connect with a
//! timeout, optional congestion control and TCP_NODELAY.

use anyhow::{Context, Result};
use mtcpd_common::sockopt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Resolve `addr` once (the first address wins).
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr}: no address"))
}

/// Connect with a timeout; set TCP_NODELAY and congestion control when asked.
pub fn connect(
    addr: &SocketAddr,
    timeout: Duration,
    nodelay: bool,
    cc: Option<&str>,
) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    if nodelay {
        s.set_nodelay(true).context("TCP_NODELAY")?;
    }
    if let Some(cc) = cc {
        sockopt::set_congestion(&s, cc)?;
    }
    Ok(s)
}
