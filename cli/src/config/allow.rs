//! The server's allow-list for dynamic targets (`[server] allow`): targets a client names that
//! are not a configured `[[server.forward]]` (typically through a client's SOCKS5 or HTTP
//! proxy).
//!
//! Owns: the rule syntax, its parse errors, and the decision for a target and for each address
//! its name resolves to. Must not touch: name resolution itself (the daemon's resolver runs on
//! the engine's resolver threads and asks [`AllowList::allows_address`] about every address)
//! or forwards.
//!
//! Rules, each `HOST:PORTS`:
//! - HOST is an address (`127.0.0.1`, `[::1]`), a network (`10.0.0.0/8`, `[fd00::/8]`), a
//!   name (`db.internal`), a name pattern (`*.example.com`: any name under example.com, not
//!   example.com itself) or `*` (any name);
//! - PORTS is a port (`443`) or a range (`1-65535`).
//!
//! The decision, so that a name cannot smuggle in an address the list does not allow:
//! 1. A target written as an address is allowed only by an address or network rule covering
//!    the address and port. Name rules never match an address.
//! 2. A target written as a name is resolved; an address it resolves to may be used when an
//!    address or network rule covers it and the port, **or** when a name rule matches the
//!    name and port **and** the address is a public one (not loopback, private, link-local,
//!    shared, unspecified, multicast, documentation or otherwise special). So `*.example.com`
//!    resolving to 127.0.0.1 is refused unless a rule such as `127.0.0.1:PORT` allows it.
//! 3. The server connects to the first usable address; a name with none is refused ("not
//!    allowed" when it resolved, "unreachable" when it did not).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

/// The parsed `[server] allow` list; empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<AllowRule>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowRule {
    host: HostRule,
    ports: RangeInclusive<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// An address and a prefix length (a lone address is a full-length prefix).
    Network { address: IpAddr, prefix: u8 },
    /// A name, lower-case, no trailing dot.
    Name(String),
    /// `*.suffix`: the suffix, lower-case, starting with a dot.
    Under(String),
    /// `*`.
    AnyName,
}

impl AllowList {
    /// Parses the rules, naming the first bad one.
    pub fn parse(rules: &[String]) -> Result<Self, (usize, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, text)| parse_rule(text).map_err(|message| (i, message)))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// No rule: nothing dynamic is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May the server connect to `address:port`, reached through `name` when the target was
    /// a name? (Rules 1 and 2 of the module doc.)
    pub fn allows_address(&self, name: Option<&str>, address: IpAddr, port: u16) -> bool {
        let address = canonical(address);
        self.rules.iter().any(|rule| {
            rule.ports.contains(&port)
                && match &rule.host {
                    HostRule::Network { .. } => rule.host.covers(address),
                    _ => name.is_some_and(|n| rule.host.matches_name(n)) && is_public(address),
                }
        })
    }

    /// Could any address of `name` be allowed (a cheap check before resolving it)?
    pub fn may_allow_name(&self, name: &str, port: u16) -> bool {
        self.rules.iter().any(|rule| {
            rule.ports.contains(&port)
                && (matches!(rule.host, HostRule::Network { .. }) || rule.host.matches_name(name))
        })
    }
}

impl HostRule {
    fn covers(&self, address: IpAddr) -> bool {
        let HostRule::Network {
            address: network,
            prefix,
        } = self
        else {
            return false;
        };
        match (network, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            HostRule::Name(n) => name.eq_ignore_ascii_case(n),
            HostRule::Under(suffix) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostRule::AnyName => true,
            HostRule::Network { .. } => false,
        }
    }
}

/// An IPv4-mapped IPv6 address is judged as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A globally routable unicast address: what a name rule may reach without an address rule.
pub fn is_public(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(a) => {
            let [b0, b1, b2, _] = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_documentation()
                || b0 == 0
                || (b0 == 100 && (64..128).contains(&b1)) // shared (CGNAT) 100.64/10
                || (b0 == 192 && b1 == 0 && b2 == 0) // IETF protocol assignments
                || (b0 == 198 && (b1 == 18 || b1 == 19)) // benchmarking
                || b0 >= 240) // reserved
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first == 0x2001 && a.segments()[1] == 0x0db8) // documentation
                || first == 0x0064 // NAT64 64:ff9b::/96 and local-use 64:ff9b:1::/48
                || first == 0) // other special forms (IPv4-compatible, ...)
        }
    }
}

fn parse_rule(text: &str) -> Result<AllowRule, String> {
    let text = text.trim();
    let hint = "write HOST:PORTS, e.g. \"10.0.0.0/8:443\", \"*.example.com:1-65535\", \
                \"[::1]:8080\" or \"db.internal:5432\"";
    let (host_text, ports_text, bracketed) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("\"{text}\": missing ']' ({hint})"))?;
        let ports = after
            .strip_prefix(':')
            .ok_or_else(|| format!("\"{text}\": missing :PORTS after ']' ({hint})"))?;
        (inside, ports, true)
    } else {
        let (host, ports) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{text}\": missing :PORTS ({hint})"))?;
        if host.contains(':') {
            return Err(format!(
                "\"{text}\": an IPv6 address needs brackets, e.g. \"[::1]:80\" ({hint})"
            ));
        }
        (host, ports, false)
    };
    let ports = parse_ports(ports_text).map_err(|m| format!("\"{text}\": {m}"))?;
    let host = parse_host(host_text, bracketed).map_err(|m| format!("\"{text}\": {m} ({hint})"))?;
    Ok(AllowRule { host, ports })
}

fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port \"{t}\" must be a number between 1 and 65535"))
    };
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                return Err(format!("port range {low}-{high} is empty (write low-high)"));
            }
            Ok(low..=high)
        }
        None => {
            let p = port(text)?;
            Ok(p..=p)
        }
    }
}

fn parse_host(text: &str, bracketed: bool) -> Result<HostRule, String> {
    if text.is_empty() {
        return Err("the host is empty".into());
    }
    let (address_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    if let Ok(address) = address_text.parse::<IpAddr>() {
        if bracketed != address.is_ipv6() {
            return Err(if bracketed {
                "only IPv6 addresses go in brackets".into()
            } else {
                "an IPv6 address needs brackets".into()
            });
        }
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length \"/{p}\" must be between 0 and {max}"))?,
        };
        let network = HostRule::Network { address, prefix };
        let base = masked(address, prefix);
        if base != address {
            return Err(format!(
                "{address}/{prefix} has bits set beyond the prefix; the network is {base}/{prefix}"
            ));
        }
        return Ok(network);
    }
    if bracketed || prefix_text.is_some() {
        return Err(format!("\"{address_text}\" is not an IP address"));
    }
    if text == "*" {
        return Ok(HostRule::AnyName);
    }
    let lower = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, lower),
    };
    if !valid_dns_name(&name) {
        return Err(format!(
            "\"{text}\" is not an address, a network, a host name or *.domain"
        ));
    }
    Ok(if wildcard {
        HostRule::Under(format!(".{name}"))
    } else {
        HostRule::Name(name)
    })
}

fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Labels of letters, digits, `-` and `_` (some internal names use it), not starting or ending
/// with `-`.
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostRule::Network {
                address: IpAddr::V6(a),
                prefix: 128,
            } => write!(f, "[{a}]")?,
            HostRule::Network {
                address: IpAddr::V4(a),
                prefix: 32,
            } => write!(f, "{a}")?,
            HostRule::Network {
                address: IpAddr::V6(a),
                prefix,
            } => write!(f, "[{a}/{prefix}]")?,
            HostRule::Network { address, prefix } => write!(f, "{address}/{prefix}")?,
            HostRule::Name(n) => write!(f, "{n}")?,
            HostRule::Under(suffix) => write!(f, "*{suffix}")?,
            HostRule::AnyName => write!(f, "*")?,
        }
        if self.ports.start() == self.ports.end() {
            write!(f, ":{}", self.ports.start())
        } else {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())
        }
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AllowList {
        AllowList::parse(&rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        let l = list(&[
            "10.0.0.0/8:443",
            "*.Example.com:1-65535",
            "127.0.0.1:9000",
            "[::1]:80",
            "[fd00::/8]:22",
            "db.internal:5432",
            "*:443",
        ]);
        assert_eq!(
            l.to_string(),
            "[10.0.0.0/8:443, *.example.com:1-65535, 127.0.0.1:9000, [::1]:80, [fd00::/8]:22, \
             db.internal:5432, *:443]"
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (bad, says) in [
            ("10.0.0.0/8", "missing :PORTS"),
            ("10.0.0.1/8:1", "the network is 10.0.0.0/8"),
            ("10.0.0.0/33:1", "between 0 and 32"),
            ("host:0", "between 1 and 65535"),
            ("host:9-1", "is empty"),
            ("host:70000", "between 1 and 65535"),
            ("::1:80", "needs brackets"),
            ("[10.0.0.1]:80", "only IPv6"),
            ("[::1:80", "missing ']'"),
            ("a b:80", "is not an address"),
            ("*.:80", "is not an address"),
            ("name/8:80", "is not an IP address"),
            (":80", "the host is empty"),
        ] {
            let (index, message) =
                AllowList::parse(&["ok:1".to_string(), bad.to_string()]).unwrap_err();
            assert_eq!(index, 1);
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }

    #[test]
    fn addresses_need_an_address_rule() {
        let l = list(&["10.0.0.0/8:443", "127.0.0.1:9000", "*.example.com:1-65535"]);
        assert!(l.allows_address(None, ip("10.1.2.3"), 443));
        assert!(!l.allows_address(None, ip("10.1.2.3"), 444));
        assert!(!l.allows_address(None, ip("11.0.0.1"), 443));
        assert!(l.allows_address(None, ip("127.0.0.1"), 9000));
        assert!(
            l.allows_address(None, ip("::ffff:127.0.0.1"), 9000),
            "v4-mapped is v4"
        );
        assert!(
            !l.allows_address(None, ip("93.184.216.34"), 80),
            "name rules never match an address"
        );
    }

    #[test]
    fn a_name_rule_reaches_public_addresses_only() {
        let l = list(&["*.example.com:1-65535", "127.0.0.1:9000"]);
        assert!(l.allows_address(Some("www.example.com"), ip("93.184.216.34"), 80));
        assert!(
            !l.allows_address(Some("example.com"), ip("93.184.216.34"), 80),
            "*. is below"
        );
        assert!(!l.allows_address(Some("evil.com"), ip("93.184.216.34"), 80));
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(
                !l.allows_address(Some("a.example.com"), ip(private), 80),
                "{private}"
            );
        }
        // ... unless an address rule allows that address and port.
        assert!(l.allows_address(Some("a.example.com"), ip("127.0.0.1"), 9000));
        assert!(l.may_allow_name("a.example.com", 1));
        assert!(
            l.may_allow_name("anything", 9000),
            "an address rule may allow what it resolves to"
        );
        assert!(!list(&["*.example.com:443"]).may_allow_name("other.org", 443));
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let l = AllowList::default();
        assert!(l.is_empty());
        assert!(!l.allows_address(Some("x"), ip("8.8.8.8"), 53));
        assert!(!l.may_allow_name("x", 53));
    }
}
