//! Pre-auth bounds: what a peer that has proved nothing can make a server hold.
//!
//! Owns: the source network a connection is counted under ([`SourcePrefix`]: an IPv4 /24, an
//! IPv6 /64, an IPv4-mapped IPv6 address as IPv4), the count of handshakes in progress per
//! source network shared by every endpoint of a runtime ([`SourceBudget`]), why a connection
//! was refused before its handshake started ([`PreauthRefusal`]), and the most bytes a
//! connection may have buffered before its handshake is done ([`MAX_HANDSHAKE_INPUT`]). Must not
//! touch: sockets or the clock — the [`super::Endpoint`] asks here when a connection is accepted
//! and gives the place back when its handshake ends; the event loop closes what is refused.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;

/// Most bytes a server connection may hold unprocessed while its handshake is in progress: a
/// ClientHello is 76 bytes, a TLS ClientHello a few KiB (one 16 KiB record at most). A peer that
/// sends more before the handshake needs it is closed.
pub const MAX_HANDSHAKE_INPUT: usize = 16 * 1024;

/// The network a source address is counted under: one attacker usually holds a whole /24 (or
/// /64), so counting single addresses would let it multiply its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePrefix {
    /// The first three bytes of an IPv4 address (or of an IPv4-mapped IPv6 one).
    V4([u8; 3]),
    /// The first eight bytes of an IPv6 address.
    V6([u8; 8]),
}

impl SourcePrefix {
    /// The network `ip` belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4.octets()),
                None => {
                    let mut first = [0; 8];
                    first.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(first)
                }
            },
        }
    }

    /// The network's first address (for logs that count per address).
    pub fn network(&self) -> IpAddr {
        match *self {
            Self::V4([a, b, c]) => IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0)),
            Self::V6(first) => {
                let mut all = [0; 16];
                all[..8].copy_from_slice(&first);
                IpAddr::V6(std::net::Ipv6Addr::from(all))
            }
        }
    }

    fn v4(octets: [u8; 4]) -> Self {
        Self::V4([octets[0], octets[1], octets[2]])
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4([a, b, c]) => write!(out, "{a}.{b}.{c}.0/24"),
            Self::V6(bytes) => {
                let groups: Vec<String> = bytes
                    .chunks(2)
                    .map(|g| format!("{:x}", u16::from_be_bytes([g[0], g[1]])))
                    .collect();
                write!(out, "{}::/64", groups.join(":"))
            }
        }
    }
}

/// Why a server closed a connection before starting its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PreauthRefusal {
    /// This endpoint (worker) already has `limit` handshakes in progress.
    #[error("too many handshakes in progress on this worker (limit {limit})")]
    TooManyHandshakes {
        /// `Config::max_handshakes` as applied.
        limit: u32,
    },
    /// The source's network already has `limit` handshakes in progress.
    #[error("too many handshakes in progress from {network} (limit {limit})")]
    TooManyFromSource {
        /// The source network.
        network: SourcePrefix,
        /// `Config::max_handshakes_per_source`.
        limit: u32,
    },
    /// A client endpoint accepts no connections.
    #[error("a client endpoint accepts no connections")]
    NotAServer,
}

/// Handshakes in progress per source network, shared by the endpoints of all the workers of a
/// runtime (clone it to share), so that the kernel spreading one network's connections over
/// the workers does not multiply its share. Only networks with a handshake in progress have an
/// entry, so the table is bounded by the handshakes themselves.
#[derive(Debug, Clone)]
pub struct SourceBudget {
    limit: u32,
    held: Arc<Mutex<HashMap<SourcePrefix, u32>>>,
}

impl SourceBudget {
    /// At most `limit` handshakes in progress from one network.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The most handshakes from one network.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Handshakes in progress from `source` now.
    pub fn held(&self, source: SourcePrefix) -> u32 {
        self.lock().get(&source).copied().unwrap_or(0)
    }

    /// Networks with a handshake in progress.
    pub fn sources(&self) -> usize {
        self.lock().len()
    }

    /// Takes a place for `source`; false when its network has `limit` already.
    pub(super) fn try_take(&self, source: SourcePrefix) -> bool {
        let mut held = self.lock();
        let count = held.entry(source).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives a place back.
    pub(super) fn give_back(&self, source: SourcePrefix) {
        let mut held = self.lock();
        if let Some(count) = held.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&source);
            }
        }
    }

    /// Counters only: a worker that panicked while holding the lock left them usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourcePrefix, u32>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn prefixes_group_a_v4_slash_24_a_v6_slash_64_and_mapped_v4_as_v4() {
        let a = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
        let b = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 250)));
        let c = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(198, 51, 101, 7)));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "198.51.100.0/24");
        assert_eq!(a.network(), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)));
        let mapped = SourcePrefix::of(IpAddr::V6(Ipv4Addr::new(198, 51, 100, 9).to_ipv6_mapped()));
        assert_eq!(mapped, a);
        let v6a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            SourcePrefix::of(IpAddr::V6(v6a)),
            SourcePrefix::of(IpAddr::V6(v6b))
        );
        assert_ne!(
            SourcePrefix::of(IpAddr::V6(v6a)),
            SourcePrefix::of(IpAddr::V6(v6c))
        );
        assert_eq!(
            SourcePrefix::of(IpAddr::V6(v6a)).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            SourcePrefix::of(IpAddr::V6(v6a)).network(),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_source_budget_is_shared_between_clones_and_forgets_idle_networks() {
        let a = SourceBudget::new(2);
        let b = a.clone();
        let net = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let other = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(192, 0, 3, 1)));
        assert!(a.try_take(net));
        assert!(b.try_take(net));
        assert!(!a.try_take(net), "the limit holds across clones");
        assert!(b.try_take(other), "another network has its own count");
        for _ in 0..3 {
            a.give_back(net);
        }
        b.give_back(other);
        assert_eq!(a.held(net), 0);
        assert_eq!(a.sources(), 0, "no entry is left for idle networks");
    }
}
